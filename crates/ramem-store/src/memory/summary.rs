//! A memory described for people: what `ramem memory info` prints (and
//! what a notebook or a server shows of an open memory).

use std::fmt::Write;

use super::reader::Memory;

/// Label names shown before the list is cut short.
const NAMES_SHOWN: usize = 12;

impl Memory {
    /// A few aligned lines: entries, keys, values, shards, labels, edits.
    pub fn summary(&self) -> String {
        let m = self.manifest();
        let mut out = String::new();
        let _ = writeln!(out, "memory:   {}", self.dir().display());
        let _ = writeln!(out, "format:   {} v{}", m.format, m.version);
        let _ = writeln!(out, "entries:  {}", m.count);
        let _ = writeln!(
            out,
            "keys:     {} x {} {}{} from {}",
            m.count,
            m.key.dim,
            m.key.dtype.name(),
            if m.key.normalized { " (unit norm)" } else { "" },
            m.key.encoder
        );
        for (kind, spec) in [("image", &m.values.image), ("text", &m.values.text)] {
            let label = format!("{kind}:");
            let _ = match spec {
                Some(v) => writeln!(
                    out,
                    "{label:<9} {} x {} {} from {}",
                    m.count,
                    v.dim,
                    v.dtype.name(),
                    v.encoder
                ),
                None => writeln!(out, "{label:<9} none"),
            };
        }
        let _ = writeln!(out, "shards:   {}", m.shards.len());
        let names = self.label_names();
        let _ = if names.is_empty() {
            writeln!(out, "labels:   none")
        } else {
            let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(String::as_str).collect();
            writeln!(
                out,
                "labels:   {} classes ({}{})",
                names.len(),
                shown.join(", "),
                if names.len() > NAMES_SHOWN {
                    ", ..."
                } else {
                    ""
                }
            )
        };
        let _ = match &m.edits {
            Some(e) => writeln!(
                out,
                "edits:    {} relabelled, {} deleted ({} live entries; `memory compact` drops the deleted)",
                e.relabeled,
                e.deleted,
                self.live_count()
            ),
            None => writeln!(out, "edits:    none"),
        };
        out
    }
}

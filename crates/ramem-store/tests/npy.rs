//! Round trips, every error case, and crash behaviour of the .npy code.

use std::fs;
use std::path::{Path, PathBuf};

use ramem_store::npy::{self, Dtype, Matrix, NpyWriter};
use ramem_store::StoreError;

/// Writes an .npy file by hand so that tests can produce malformed ones.
fn craft(path: &Path, version: (u8, u8), dict: &str, data: &[u8]) {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version.0, version.1]);
    let header = format!("{dict}\n");
    if version.0 == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    fs::write(path, out).unwrap();
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sample(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|k| (k as f32 - 3.5) / 7.0).collect()
}

#[test]
fn f32_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.npy");
    let data = sample(5, 3);
    npy::write_f32_matrix(&p, 5, 3, &data).unwrap();
    let m = npy::read_f32_matrix(&p).unwrap();
    assert_eq!(
        m,
        Matrix {
            rows: 5,
            cols: 3,
            data: data.clone()
        }
    );
    assert_eq!(m.row(1), &data[3..6]);
    assert_eq!(m.iter_rows().count(), 5);

    let h = npy::read_header(&p).unwrap();
    assert_eq!(h.dtype, Dtype::F32);
    assert_eq!(h.shape, vec![5, 3]);
    assert_eq!(h.version, (1, 0));
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), h.data_offset + 60);
}

#[test]
fn special_float_values_survive() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.npy");
    let data = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MIN_POSITIVE,
        f32::MAX,
        1e-45,
    ];
    npy::write_f32_matrix(&p, 2, 3, &data).unwrap();
    let back = npy::read_f32_matrix(&p).unwrap().data;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back), bits(&data));
}

#[test]
fn f16_round_trip_reads_back_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.npy");
    let data = sample(4, 6);
    npy::write_f16_matrix(&p, 4, 6, &data).unwrap();
    assert_eq!(npy::read_header(&p).unwrap().dtype, Dtype::F16);
    let m = npy::read_f32_matrix(&p).unwrap();
    assert_eq!((m.rows, m.cols), (4, 6));
    let expected: Vec<f32> = data
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(m.data, expected);
    // Half precision really is lossy for these values, so the test above is
    // not comparing the input with itself.
    assert_ne!(m.data, data);
    for (a, b) in m.data.iter().zip(&data) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0));
    }
}

#[test]
fn i64_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.npy");
    let data = vec![0, -1, i64::MAX, i64::MIN, 42, 1 << 40];
    npy::write_i64_matrix(&p, 3, 2, &data).unwrap();
    let m = npy::read_i64_matrix(&p).unwrap();
    assert_eq!(
        m,
        Matrix {
            rows: 3,
            cols: 2,
            data
        }
    );
}

#[test]
fn empty_matrices_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.npy");
    npy::write_f32_matrix(&p, 0, 1280, &[]).unwrap();
    let m = npy::read_f32_matrix(&p).unwrap();
    assert_eq!((m.rows, m.cols, m.data.len()), (0, 1280, 0));
    npy::write_i64_matrix(&p, 4, 0, &[]).unwrap();
    let m = npy::read_i64_matrix(&p).unwrap();
    assert_eq!((m.rows, m.cols), (4, 0));
    assert_eq!(m.iter_rows().count(), 4);
}

#[test]
fn one_dimensional_arrays_read_as_a_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("labels.npy");
    let values: Vec<u8> = [7i64, 8, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    craft(
        &p,
        (1, 0),
        "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }",
        &values,
    );
    let m = npy::read_i64_matrix(&p).unwrap();
    assert_eq!((m.rows, m.cols, m.data), (3, 1, vec![7, 8, 9]));
}

#[test]
fn header_versions_2_and_3_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    for version in [(2, 0), (3, 0)] {
        let p = dir.path().join(format!("v{}.npy", version.0));
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }";
        craft(&p, version, dict, &values);
        let h = npy::read_header(&p).unwrap();
        assert_eq!(h.version, version);
        // magic + version + u32 length, then the dict and its newline
        assert_eq!(h.data_offset, 12 + dict.len() as u64 + 1);
        assert_eq!(npy::read_f32_matrix(&p).unwrap().data, vec![1.5, -2.0]);
    }
}

/// Asserts that `result` failed, that the message names `path`, and that it
/// contains `needle`; returns the error for variant checks.
fn expect_err<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    path: &Path,
    needle: &str,
) -> StoreError {
    let err = result.expect_err("expected an error");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message lacks the path: {msg}"
    );
    assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    err
}

#[test]
fn bad_magic_is_not_npy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    fs::write(&p, b"PK\x03\x04 this is a zip, not an array").unwrap();
    let err = expect_err(npy::read_f32_matrix(&p), &p, "not an .npy file");
    assert!(matches!(err, StoreError::NotNpy { .. }));
    fs::write(&p, b"abc").unwrap();
    assert!(matches!(
        npy::read_header(&p),
        Err(StoreError::NotNpy { .. })
    ));
}

#[test]
fn truncation_is_detected_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.npy");
    npy::write_f32_matrix(&good, 10, 10, &sample(10, 10)).unwrap();
    let bytes = fs::read(&good).unwrap();
    let p = dir.path().join("cut.npy");
    // Cut inside the preamble, the header and the data.
    for cut in [0, 4, 9, 40, 128, bytes.len() - 1] {
        fs::write(&p, &bytes[..cut]).unwrap();
        let err = expect_err(npy::read_f32_matrix(&p), &p, "truncated");
        assert!(
            matches!(err, StoreError::Truncated { .. }),
            "cut at {cut}: {err:?}"
        );
    }
    fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
    let msg = npy::read_header(&p).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("needs {} bytes", bytes.len())),
        "{msg}"
    );
}

#[test]
fn trailing_bytes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("long.npy");
    npy::write_f32_matrix(&p, 2, 2, &sample(2, 2)).unwrap();
    let mut bytes = fs::read(&p).unwrap();
    bytes.extend_from_slice(&[0; 4]);
    fs::write(&p, bytes).unwrap();
    let err = expect_err(npy::read_f32_matrix(&p), &p, "trailing data");
    assert!(matches!(err, StoreError::TrailingData { .. }));
}

#[test]
fn unsupported_dtypes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.npy");
    craft(
        &p,
        (1, 0),
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
        &[0; 8],
    );
    let err = expect_err(npy::read_f32_matrix(&p), &p, "<f8");
    assert!(matches!(err, StoreError::UnsupportedDtype { .. }));

    craft(
        &p,
        (1, 0),
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
        &[0; 4],
    );
    let err = expect_err(npy::read_header(&p), &p, "unsupported dtype");
    assert!(matches!(err, StoreError::UnsupportedDtype { .. }));
}

#[test]
fn big_endian_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("be.npy");
    craft(
        &p,
        (1, 0),
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
        &[0; 8],
    );
    let err = expect_err(npy::read_f32_matrix(&p), &p, "big-endian");
    assert!(matches!(err, StoreError::BigEndian { .. }));
}

#[test]
fn fortran_order_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.npy");
    craft(
        &p,
        (1, 0),
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
        &[0; 16],
    );
    let err = expect_err(npy::read_f32_matrix(&p), &p, "Fortran");
    assert!(matches!(err, StoreError::FortranOrder { .. }));
}

#[test]
fn bad_header_dicts_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.npy");
    for dict in [
        "{'descr': '<f4', 'shape': (1,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [1], }",
        "not a dict at all",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), ",
    ] {
        craft(&p, (1, 0), dict, &[0; 4]);
        let err = expect_err(npy::read_f32_matrix(&p), &p, "bad .npy header");
        assert!(
            matches!(err, StoreError::BadHeader { .. }),
            "{dict}: {err:?}"
        );
    }
    // A shape whose byte size overflows must not allocate or panic.
    craft(
        &p,
        (1, 0),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }",
        &[],
    );
    expect_err(npy::read_header(&p), &p, "too large");
    // A header that is not text.
    let mut bytes = b"\x93NUMPY\x01\x00\x04\x00\xff\xfe\xfd\n".to_vec();
    bytes.extend_from_slice(&[0; 4]);
    fs::write(&p, bytes).unwrap();
    expect_err(npy::read_header(&p), &p, "not valid text");
}

#[test]
fn unknown_versions_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.npy");
    craft(
        &p,
        (1, 0),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
        &[0; 4],
    );
    let mut bytes = fs::read(&p).unwrap();
    bytes[6] = 4;
    fs::write(&p, bytes).unwrap();
    let err = expect_err(npy::read_header(&p), &p, "version 4.0");
    assert!(matches!(
        err,
        StoreError::UnsupportedVersion {
            major: 4,
            minor: 0,
            ..
        }
    ));
}

#[test]
fn wrong_ndim_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("n.npy");
    craft(
        &p,
        (1, 0),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }",
        &[0; 32],
    );
    // The header itself is fine; only matrix readers need 2-D.
    assert_eq!(npy::read_header(&p).unwrap().shape, vec![2, 2, 2]);
    let err = expect_err(npy::read_f32_matrix(&p), &p, "2-D array");
    assert!(matches!(err, StoreError::WrongNdim { .. }));
    craft(
        &p,
        (1, 0),
        "{'descr': '<i8', 'fortran_order': False, 'shape': (), }",
        &[0; 8],
    );
    assert!(matches!(
        npy::read_i64_matrix(&p),
        Err(StoreError::WrongNdim { .. })
    ));
}

#[test]
fn reading_the_wrong_type_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.npy");
    npy::write_f32_matrix(&p, 1, 2, &[1.0, 2.0]).unwrap();
    let err = expect_err(
        npy::read_i64_matrix(&p),
        &p,
        "expected dtype <i8 or <i4, found <f4",
    );
    assert!(matches!(err, StoreError::DtypeMismatch { .. }));
    npy::write_i64_matrix(&p, 1, 2, &[1, 2]).unwrap();
    expect_err(npy::read_f32_matrix(&p), &p, "found <i8");
}

#[test]
fn missing_file_error_names_it() {
    let p = PathBuf::from("/nonexistent/dir/embeddings.npy");
    let err = expect_err(npy::read_f32_matrix(&p), &p, "cannot open");
    assert!(matches!(err, StoreError::Io { .. }));
}

#[test]
fn writes_check_the_shape() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.npy");
    let err = expect_err(
        npy::write_f32_matrix(&p, 2, 3, &[0.0; 5]),
        &p,
        "5 values cannot form a 2 x 3",
    );
    assert!(matches!(err, StoreError::ShapeMismatch { .. }));
    expect_err(
        npy::write_i64_matrix(&p, usize::MAX, 2, &[]),
        &p,
        "cannot form",
    );
    assert!(
        dir_entries(dir.path()).is_empty(),
        "a failed write left files behind"
    );
}

#[test]
fn streamed_file_matches_a_direct_write() {
    let dir = tempfile::tempdir().unwrap();
    let streamed = dir.path().join("streamed.npy");
    let data = sample(7, 4);
    let mut w = NpyWriter::create(&streamed, Dtype::F32, 4).unwrap();
    w.append_rows(&data[..8]).unwrap();
    w.append_rows(&[]).unwrap();
    w.append_rows(&data[8..]).unwrap();
    assert_eq!(w.rows(), 7);
    assert!(!streamed.exists(), "visible before finish");
    assert_eq!(w.finish().unwrap(), (7, 4));
    assert_eq!(npy::read_f32_matrix(&streamed).unwrap().data, data);
    assert_eq!(npy::read_header(&streamed).unwrap().data_offset, 128);
    assert_eq!(dir_entries(dir.path()), vec!["streamed.npy"]);
}

#[test]
fn streamed_f16_and_i64() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.npy");
    let mut w = NpyWriter::create(&p, Dtype::F16, 2).unwrap();
    w.append_rows(&[0.5, 1.0, 2.0, 4.0]).unwrap();
    w.finish().unwrap();
    assert_eq!(
        npy::read_f32_matrix(&p).unwrap().data,
        vec![0.5, 1.0, 2.0, 4.0]
    );

    let p = dir.path().join("i.npy");
    let mut w = NpyWriter::create(&p, Dtype::I64, 1).unwrap();
    w.append_rows_i64(&[3, 1, 4]).unwrap();
    assert!(w.append_rows(&[1.0]).is_err());
    w.finish().unwrap();
    assert_eq!(npy::read_i64_matrix(&p).unwrap().data, vec![3, 1, 4]);
}

#[test]
fn streamed_partial_rows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.npy");
    let mut w = NpyWriter::create(&p, Dtype::F32, 3).unwrap();
    w.append_rows(&[1.0, 2.0, 3.0]).unwrap();
    let err = expect_err(w.append_rows(&[1.0, 2.0]), &p, "not a whole number of rows");
    assert!(matches!(err, StoreError::PartialRow { .. }));
    assert_eq!(w.finish().unwrap(), (1, 3));
    assert!(NpyWriter::create(&p, Dtype::F32, 0).is_err());
}

#[test]
fn dropped_writer_leaves_existing_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("emb.npy");
    npy::write_f32_matrix(&p, 1, 2, &[9.0, 8.0]).unwrap();
    let before = fs::read(&p).unwrap();
    {
        let mut w = NpyWriter::create(&p, Dtype::F32, 2).unwrap();
        w.append_rows(&sample(1000, 2)).unwrap();
        // Dropped here without finish, as on an error path.
    }
    assert_eq!(fs::read(&p).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), vec!["emb.npy"]);
}

#[test]
fn panic_during_streaming_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("emb.npy");
    let p2 = p.clone();
    let result = std::thread::spawn(move || {
        let mut w = NpyWriter::create(&p2, Dtype::F32, 2).unwrap();
        w.append_rows(&[1.0, 2.0]).unwrap();
        panic!("simulated failure while encoding");
    })
    .join();
    assert!(result.is_err());
    assert!(dir_entries(dir.path()).is_empty());
}

/// Run in a child process by `killed_writer_never_exposes_a_partial_file`:
/// streams rows, then dies without running any destructor.
#[test]
fn crash_child_helper() {
    let Ok(path) = std::env::var("RAMEM_STORE_CRASH_AT") else {
        return;
    };
    let mut w = NpyWriter::create(&path, Dtype::F32, 4).unwrap();
    w.append_rows(&sample(10_000, 4)).unwrap();
    std::process::abort();
}

#[test]
fn killed_writer_never_exposes_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("emb.npy");
    npy::write_f32_matrix(&p, 1, 4, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let before = fs::read(&p).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child_helper", "--exact", "--test-threads=1"])
        .env("RAMEM_STORE_CRASH_AT", &p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was supposed to abort");
    // The old file is intact; the only other thing is the hidden temp file.
    assert_eq!(fs::read(&p).unwrap(), before);
    let names = dir_entries(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with(".emb.npy.") && names[0].ends_with(".tmp"),
        "{names:?}"
    );
    assert_eq!(
        npy::read_f32_matrix(&p).unwrap().data,
        vec![1.0, 2.0, 3.0, 4.0]
    );
}

#[test]
fn concat_joins_parts_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("part-0.npy");
    let b = dir.path().join("part-1.npy");
    let c = dir.path().join("part-2.npy");
    let all = sample(9, 3);
    npy::write_f32_matrix(&a, 4, 3, &all[..12]).unwrap();
    npy::write_f32_matrix(&b, 0, 3, &[]).unwrap();
    npy::write_f16_matrix(&c, 5, 3, &all[12..]).unwrap();
    let out = dir.path().join("all.npy");
    assert_eq!(npy::concat_f32_files(&[a, b, c], &out).unwrap(), (9, 3));
    let m = npy::read_f32_matrix(&out).unwrap();
    assert_eq!(&m.data[..12], &all[..12]);
    let halves: Vec<f32> = all[12..]
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(&m.data[12..], &halves[..]);
}

#[test]
fn concat_streams_parts_larger_than_a_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let cols = 1000;
    let rows = 150; // 150k values, more than one 64k-value chunk
    let data = sample(rows, cols);
    let a = dir.path().join("a.npy");
    let b = dir.path().join("b.npy");
    npy::write_f32_matrix(&a, rows, cols, &data).unwrap();
    npy::write_f32_matrix(&b, 1, cols, &data[..cols]).unwrap();
    // The output may be one of the inputs: it is replaced only at the end.
    assert_eq!(
        npy::concat_f32_files(&[&a, &b], &a).unwrap(),
        (rows + 1, cols)
    );
    let m = npy::read_f32_matrix(&a).unwrap();
    assert_eq!(&m.data[..rows * cols], &data[..]);
    assert_eq!(m.row(rows), &data[..cols]);
}

#[test]
fn concat_checks_columns_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.npy");
    let b = dir.path().join("b.npy");
    npy::write_f32_matrix(&a, 1, 3, &[1.0; 3]).unwrap();
    npy::write_f32_matrix(&b, 1, 4, &[1.0; 4]).unwrap();
    let out = dir.path().join("out.npy");
    let err = expect_err(npy::concat_f32_files(&[&a, &b], &out), &b, "has 4 columns");
    assert!(err.to_string().contains(&a.display().to_string()));
    assert!(!out.exists());
    assert_eq!(dir_entries(dir.path()), vec!["a.npy", "b.npy"]);

    let i = dir.path().join("i.npy");
    npy::write_i64_matrix(&i, 1, 3, &[1; 3]).unwrap();
    expect_err(npy::concat_f32_files(&[&a, &i], &out), &i, "found <i8");
    let empty: [PathBuf; 0] = [];
    expect_err(npy::concat_f32_files(&empty, &out), &out, "no input files");
    assert!(!out.exists());
}

#[test]
fn concat_reports_a_truncated_part() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.npy");
    let b = dir.path().join("b.npy");
    npy::write_f32_matrix(&a, 2, 2, &[1.0; 4]).unwrap();
    npy::write_f32_matrix(&b, 2, 2, &[1.0; 4]).unwrap();
    let bytes = fs::read(&b).unwrap();
    fs::write(&b, &bytes[..bytes.len() - 2]).unwrap();
    let out = dir.path().join("out.npy");
    expect_err(npy::concat_f32_files(&[&a, &b], &out), &b, "truncated");
    assert!(!out.exists());
}

#[test]
fn row_reader_reads_ranges_of_f32_and_f16() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(7, 3);
    for (name, dtype) in [("a.npy", Dtype::F32), ("b.npy", Dtype::F16)] {
        let p = dir.path().join(name);
        match dtype {
            Dtype::F32 => npy::write_f32_matrix(&p, 7, 3, &data).unwrap(),
            _ => npy::write_f16_matrix(&p, 7, 3, &data).unwrap(),
        }
        let mut r = npy::NpyRowReader::open(&p).unwrap();
        assert_eq!((r.rows(), r.cols(), r.dtype()), (7, 3, dtype));
        let mut out = vec![99.0];
        r.read_rows(5, 2, &mut out).unwrap();
        assert_eq!(out.len(), 6);
        for (got, want) in out.iter().zip(&data[15..21]) {
            assert!((got - want).abs() < 1e-3, "{name}: {got} vs {want}");
        }
        r.read_rows(0, 1, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        r.read_rows(7, 0, &mut out).unwrap();
        assert!(out.is_empty());
        let err = r.read_rows(6, 2, &mut out).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains("rows 6..8"), "{err}");
    }
    let p = dir.path().join("i.npy");
    npy::write_i64_matrix(&p, 1, 1, &[1]).unwrap();
    let err = npy::NpyRowReader::open(&p).unwrap_err().to_string();
    assert!(err.contains("i.npy") && err.contains("<f4 or <f2"), "{err}");
}

use ramem_eval::{evaluate, evaluate_method, evaluate_predictions, EvalError, ShotGroup};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Three classes: class 0 many-shot, 1 medium-shot, 2 few-shot.
const COUNTS: [usize; 3] = [150, 50, 5];

#[test]
fn hand_computed_case_with_ties_and_groups() {
    #[rustfmt::skip]
    let scores = [
        0.9, 0.05, 0.05, // label 0: correct
        0.1, 0.8, 0.1,   // label 0: wrong
        0.3, 0.3, 0.4,   // label 1: wrong
        0.5, 0.5, 0.5,   // label 2: three-way tie goes to class 0, wrong
        0.5, 0.5, 0.0,   // label 1: tie goes to class 0, wrong
        0.5, 0.5, 0.0,   // label 0: tie goes to class 0, correct
    ];
    let labels = [0, 0, 1, 2, 1, 0];
    let m = evaluate(&scores, 3, &labels, &COUNTS).unwrap();
    assert_eq!(m.n, 6);
    assert!(close(m.top1, 100.0 * 2.0 / 6.0), "{}", m.top1);
    // Only three classes: top-5 is top-3, always right.
    assert_eq!(m.top5, Some(100.0));
    assert!(close(m.many.unwrap(), 100.0 * 2.0 / 3.0));
    assert_eq!(m.medium, Some(0.0));
    assert_eq!(m.few, Some(0.0));
    assert_eq!(m.per_class.len(), 3);
    assert!(close(m.per_class[0].unwrap(), 100.0 * 2.0 / 3.0));
    assert_eq!(&m.per_class[1..], &[Some(0.0), Some(0.0)]);
}

#[test]
fn top_k_with_ties_ranks_lower_index_first() {
    // 7 classes, k = 5. Label 6 scores 0.5; classes 0..4 score 0.5 too.
    let mut row = vec![0.5f32; 7];
    row[5] = 0.0;
    // Five classes tie with it and have lower indices: rank 5, outside top-5.
    let m = evaluate(&row, 7, &[6], &[0; 7]).unwrap();
    assert_eq!((m.top1, m.top5), (0.0, Some(0.0)));
    // Label 4: four tied classes before it, rank 4, inside top-5.
    let m = evaluate(&row, 7, &[4], &[0; 7]).unwrap();
    assert_eq!((m.top1, m.top5), (0.0, Some(100.0)));
    // Label 0 wins the tie.
    let m = evaluate(&row, 7, &[0], &[0; 7]).unwrap();
    assert_eq!((m.top1, m.top5), (100.0, Some(100.0)));
}

#[test]
fn top5_with_many_classes_counts_strictly_higher_scores() {
    let row: Vec<f32> = (0..10).map(|i| i as f32).collect(); // class 9 best
    let labels = [9, 5, 4, 0];
    let scores: Vec<f32> = labels.iter().flat_map(|_| row.clone()).collect();
    let m = evaluate(&scores, 10, &labels, &[0; 10]).unwrap();
    assert_eq!(m.top1, 25.0);
    // Ranks 0, 4, 5, 9: two of four in the top-5.
    assert_eq!(m.top5, Some(50.0));
}

#[test]
fn logits_and_infinities_are_fine() {
    let scores = [-3.0, f32::NEG_INFINITY, f32::INFINITY, 2.0];
    let m = evaluate(&scores, 2, &[0, 1], &[10, 10]).unwrap();
    assert_eq!(m.top1, 50.0);
    assert_eq!(m.top5, Some(100.0));
}

#[test]
fn shot_group_boundaries() {
    assert_eq!(ShotGroup::of(101), ShotGroup::Many);
    assert_eq!(ShotGroup::of(100), ShotGroup::Medium);
    assert_eq!(ShotGroup::of(20), ShotGroup::Medium);
    assert_eq!(ShotGroup::of(19), ShotGroup::Few);
    assert_eq!(ShotGroup::of(0), ShotGroup::Few);
}

#[test]
fn empty_groups_are_none() {
    // All classes many-shot.
    let m = evaluate(&[1.0, 0.0], 2, &[0], &[200, 300]).unwrap();
    assert_eq!((m.many, m.medium, m.few), (Some(100.0), None, None));
    // A few-shot class exists but has no test image: still None.
    let m = evaluate(&[1.0, 0.0], 2, &[0], &[200, 3]).unwrap();
    assert_eq!(m.few, None);
    assert_eq!(m.per_class, vec![Some(100.0), None]);
}

#[test]
fn hard_predictions() {
    let m = evaluate_predictions(&[0, 1, 1, 2], 3, &[0, 1, 2, 2], &COUNTS).unwrap();
    assert_eq!(m.top1, 75.0);
    assert_eq!(m.top5, None);
    assert_eq!(
        (m.many, m.medium, m.few),
        (Some(100.0), Some(100.0), Some(50.0))
    );
    let err = evaluate_predictions(&[0, 3], 3, &[0, 1], &COUNTS).unwrap_err();
    assert!(matches!(
        err,
        EvalError::PredictionOutOfRange {
            row: 1,
            prediction: 3,
            ..
        }
    ));
    let err = evaluate_predictions(&[0], 3, &[0, 1], &COUNTS).unwrap_err();
    assert!(
        err.to_string()
            .contains("predictions has 1 values, expected 2"),
        "{err}"
    );
}

#[test]
fn label_out_of_range_names_row_and_label() {
    let err = evaluate(&[0.0; 6], 3, &[0, 3], &COUNTS).unwrap_err();
    assert!(matches!(
        err,
        EvalError::LabelOutOfRange {
            row: 1,
            label: 3,
            num_classes: 3
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("label 3") && msg.contains("test image 1"),
        "{msg}"
    );
}

#[test]
fn shape_errors() {
    let err = evaluate(&[0.0; 5], 3, &[0, 1], &COUNTS).unwrap_err();
    assert!(
        err.to_string().contains("scores has 5 values, expected 6"),
        "{err}"
    );
    let err = evaluate(&[0.0; 6], 3, &[0, 1], &[1, 2]).unwrap_err();
    assert!(
        err.to_string()
            .contains("train_counts has 2 values, expected 3"),
        "{err}"
    );
    assert!(matches!(
        evaluate(&[], 3, &[], &COUNTS),
        Err(EvalError::Empty)
    ));
    assert!(matches!(
        evaluate(&[], 0, &[0], &[]),
        Err(EvalError::NoClasses)
    ));
}

#[test]
fn nan_is_an_error_naming_the_method() {
    let scores = [0.0, 1.0, 0.5, f32::NAN];
    let err = evaluate(&scores, 2, &[0, 1], &[1, 1]).unwrap_err();
    assert!(matches!(err, EvalError::NanScore { row: 1, class: 1 }));
    let err = evaluate_method("tip_adapter", &scores, 2, &[0, 1], &[1, 1]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("tip_adapter: "), "{msg}");
    assert!(msg.contains("test image 1, class 1 is NaN"), "{msg}");
}

//! The evaluation protocols: exact long-tail counts, exact and reproducible
//! noise rates, stratified splits, shot groups.

use ramem_data::protocol::*;
use ramem_data::DataError;

/// `per_class` examples of each of `classes` classes, interleaved.
fn balanced(classes: usize, per_class: usize) -> Vec<usize> {
    (0..classes * per_class).map(|i| i % classes).collect()
}

#[test]
fn long_tail_counts_match_the_cifar_lt_rule() {
    assert_eq!(
        long_tail_counts(10, 500, 100.0).unwrap(),
        [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    );
    assert_eq!(
        long_tail_counts(10, 5000, 100.0).unwrap(),
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    );
    assert_eq!(
        long_tail_counts(10, 5000, 10.0).unwrap(),
        [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
    );
    assert_eq!(long_tail_counts(3, 100, 1.0).unwrap(), [100, 100, 100]);
    assert_eq!(long_tail_counts(1, 7, 100.0).unwrap(), [7]);
    let msg = long_tail_counts(10, 50, 100.0).unwrap_err().to_string();
    assert!(msg.contains("leaves class 8 of 10"), "{msg}");
    assert!(long_tail_counts(10, 500, 0.5).is_err());
    assert!(long_tail_counts(10, 500, f64::NAN).is_err());
}

#[test]
fn long_tail_subset_has_the_counts_and_is_seeded() {
    let labels = balanced(10, 600);
    let subset = long_tail_subset(&labels, 10, 500, 100.0, 1).unwrap();
    let picked: Vec<usize> = subset.iter().map(|&i| labels[i]).collect();
    assert_eq!(
        class_counts(&picked, 10).unwrap(),
        [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    );
    assert!(
        subset.windows(2).all(|w| w[0] < w[1]),
        "ascending, no repeats"
    );
    assert_eq!(
        subset,
        long_tail_subset(&labels, 10, 500, 100.0, 1).unwrap()
    );
    assert_ne!(
        subset,
        long_tail_subset(&labels, 10, 500, 100.0, 2).unwrap()
    );

    let labels: Vec<usize> = balanced(10, 600)
        .into_iter()
        .filter(|&l| l != 3)
        .chain(vec![3; 50])
        .collect();
    let msg = long_tail_subset(&labels, 10, 500, 100.0, 1)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("class 3 has 50 examples") && msg.contains("needs 107"),
        "{msg}"
    );
}

#[test]
fn symmetric_noise_flips_exactly_the_rate_to_other_classes() {
    let labels = balanced(10, 1000);
    for rate in [0.0, 0.2, 0.5, 0.8, 1.0] {
        let noisy = symmetric_noise(&labels, 10, rate, 42).unwrap();
        let changed = labels
            .iter()
            .zip(&noisy.labels)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, (10_000.0 * rate) as usize);
        assert_eq!(noisy.flipped, changed);
        assert!((noisy.rate() - rate).abs() < 1e-12);
        assert!(noisy.labels.iter().all(|&l| l < 10));
        assert_eq!(noisy, symmetric_noise(&labels, 10, rate, 42).unwrap());
    }
    // New labels are spread over the other classes.
    let noisy = symmetric_noise(&labels, 10, 1.0, 3).unwrap();
    let from_zero: Vec<usize> = labels
        .iter()
        .zip(&noisy.labels)
        .filter(|(&a, _)| a == 0)
        .map(|(_, &b)| b)
        .collect();
    let counts = class_counts(&from_zero, 10).unwrap();
    assert_eq!(counts[0], 0);
    assert!(counts[1..].iter().all(|&c| c > 60), "{counts:?}");
    assert_ne!(noisy, symmetric_noise(&labels, 10, 1.0, 4).unwrap());

    assert!(symmetric_noise(&labels, 10, 1.5, 0).is_err());
    assert!(symmetric_noise(&[0, 0], 1, 0.5, 0).is_err());
    let msg = symmetric_noise(&[0, 10], 10, 0.5, 0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("label 10"), "{msg}");
}

#[test]
fn asymmetric_noise_flips_the_pairs_at_the_rate() {
    let labels = balanced(10, 1000);
    let noisy = asymmetric_noise(&labels, 10, &FASHION_MNIST_ASYMMETRIC_FLIPS, 0.4, 9).unwrap();
    assert_eq!(noisy.flipped, 5 * 400);
    let mut moved = [[0usize; 10]; 10];
    for (&a, &b) in labels.iter().zip(&noisy.labels) {
        moved[a][b] += 1;
    }
    for (s, t) in FASHION_MNIST_ASYMMETRIC_FLIPS {
        assert_eq!(moved[s][t], 400, "{s} -> {t}");
        assert_eq!(moved[s][s], 600);
    }
    for c in [1, 3, 8, 9, 7] {
        assert_eq!(moved[c][c], 1000, "class {c} untouched");
    }
    assert_eq!(
        noisy,
        asymmetric_noise(&labels, 10, &FASHION_MNIST_ASYMMETRIC_FLIPS, 0.4, 9).unwrap()
    );

    assert!(asymmetric_noise(&labels, 10, &[(1, 1)], 0.4, 0).is_err());
    assert!(asymmetric_noise(&labels, 10, &[(1, 2), (1, 3)], 0.4, 0).is_err());
    let msg = asymmetric_noise(&labels, 10, &[(1, 12)], 0.4, 0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("1 -> 12"), "{msg}");
}

#[test]
fn stratified_split_keeps_both_sides_of_every_class() {
    let mut labels = balanced(4, 10);
    labels.extend([4, 4, 5]); // class 4 has 2 examples, class 5 one.
    let (train, test) = stratified_split(&labels, 0.3, 5).unwrap();
    assert_eq!(train.len() + test.len(), labels.len());
    let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
    all.sort();
    assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
    let count = |idx: &[usize]| {
        class_counts(&idx.iter().map(|&i| labels[i]).collect::<Vec<_>>(), 6).unwrap()
    };
    assert_eq!(count(&test), [3, 3, 3, 3, 1, 0]);
    assert_eq!(count(&train), [7, 7, 7, 7, 1, 1]);
    assert_eq!(
        (train.clone(), test.clone()),
        stratified_split(&labels, 0.3, 5).unwrap()
    );
    assert_ne!(test, stratified_split(&labels, 0.3, 6).unwrap().1);
    // A tiny fraction still puts one of each class in test, a large one keeps one in train.
    assert_eq!(
        count(&stratified_split(&labels, 0.01, 0).unwrap().1),
        [1, 1, 1, 1, 1, 0]
    );
    assert_eq!(
        count(&stratified_split(&labels, 0.99, 0).unwrap().0),
        [1, 1, 1, 1, 1, 1]
    );
    assert!(stratified_split(&labels, 1.0, 0).is_err());
    assert!(stratified_split(&labels, 0.0, 0).is_err());
}

#[test]
fn shot_groups_and_empty_classes() {
    use ShotGroup::*;
    assert_eq!(
        shot_groups(&[101, 100, 20, 19, 0]),
        [Many, Medium, Medium, Few, Few]
    );
    assert_eq!(Many.name(), "many");
    check_no_empty_class(&[0, 1, 2], 3, "train").unwrap();
    let err = check_no_empty_class(&[0, 2, 2], 3, "long-tailed train").unwrap_err();
    assert!(matches!(err, DataError::EmptyClass { .. }));
    assert_eq!(
        err.to_string(),
        "long-tailed train: class 1 has no examples"
    );
}

//! The fault matrix in CI, with short outages (`weft-lab faults --quick`
//! runs the same): every fault recovered from, followed by a join and a
//! leave, and no pod packet lost where the data plane was not touched.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use weft_lab::matrix::{self, Durations, Fault, Matrix};
use weft_lab::unique_name;

#[test]
fn every_fault_is_recovered_from_and_untouched_data_planes_lose_nothing() {
    let mut m = Matrix::up(&unique_name("faults")).unwrap();
    let rows: Vec<matrix::Row> = Fault::ALL
        .iter()
        .map(|f| m.run(*f, &Durations::QUICK).unwrap())
        .collect();
    let table = matrix::table(&rows);
    eprint!("{table}");
    for r in &rows {
        assert!(r.passed(), "{} failed:\n{table}", r.fault.name());
        assert!(
            r.follow_seconds.is_some(),
            "{}: no follow-up",
            r.fault.name()
        );
        // The pingers ran through the whole fault.
        assert!(r.packets.sent > 200, "{}: {:?}", r.fault.name(), r.packets);
    }
    let by = |f: Fault| rows.iter().find(|r| r.fault == f).unwrap();
    // A second weftd waits for the first instead of running beside it.
    let two = by(Fault::TwoWeftd);
    assert!(
        two.notes
            .iter()
            .any(|n| n.contains("first weftd running, second running")
                && n.contains("another weftd runs on this node")),
        "{:?}",
        two.notes
    );
    // The partition was real: the cut node had not heard of the joined one.
    let part = by(Fault::Partition);
    assert!(
        part.notes.iter().any(|n| n.contains("had no route to")),
        "{:?}",
        part.notes
    );
}

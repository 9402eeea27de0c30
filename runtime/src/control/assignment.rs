//! Which worker reads which partition: a balanced plan that moves as few partitions as
//! possible (pure). Moves happen only at checkpoint boundaries; the coordinator sequences them.

use std::collections::{BTreeMap, BTreeSet};

use crate::{control::protocol::WorkerId, offsets::TopicPartition};

/// Plans the owner of every partition among `active` workers (in preference order).
/// Every worker ends with ⌊n/w⌋ or ⌈n/w⌉ partitions; a partition stays with its current owner
/// whenever that owner is active and within its share.
pub fn plan_assignment(
    partitions: &BTreeSet<TopicPartition>,
    current: &BTreeMap<TopicPartition, WorkerId>,
    active: &[WorkerId],
) -> BTreeMap<TopicPartition, WorkerId> {
    if active.is_empty() {
        return BTreeMap::new();
    }
    let (n, w) = (partitions.len(), active.len());
    let mut held: BTreeMap<WorkerId, Vec<&TopicPartition>> =
        active.iter().map(|&id| (id, Vec::new())).collect();
    let mut pool: Vec<&TopicPartition> = Vec::new();
    for tp in partitions {
        match current.get(tp).and_then(|o| held.get_mut(o)) {
            Some(list) => list.push(tp),
            None => pool.push(tp),
        }
    }
    // The larger shares go to the workers holding the most already: fewer moves.
    let mut order: Vec<WorkerId> = active.to_vec();
    order.sort_by_key(|id| {
        (
            std::cmp::Reverse(held[id].len()),
            active.iter().position(|a| a == id),
        )
    });
    let capacity: BTreeMap<WorkerId, usize> = order
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, n / w + usize::from(i < n % w)))
        .collect();
    let mut plan = BTreeMap::new();
    for (&id, list) in &held {
        let keep = capacity[&id].min(list.len());
        for tp in &list[..keep] {
            plan.insert((*tp).clone(), id);
        }
        pool.extend(&list[keep..]);
    }
    pool.sort();
    let mut pool = pool.into_iter();
    for &id in active {
        let have = plan.values().filter(|&&o| o == id).count();
        for _ in have..capacity[&id] {
            if let Some(tp) = pool.next() {
                plan.insert(tp.clone(), id);
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(n: i32) -> BTreeSet<TopicPartition> {
        (0..n)
            .map(|p| TopicPartition {
                topic: "t".into(),
                partition: p,
            })
            .collect()
    }

    fn counts(plan: &BTreeMap<TopicPartition, WorkerId>) -> BTreeMap<WorkerId, usize> {
        let mut c = BTreeMap::new();
        for &w in plan.values() {
            *c.entry(w).or_default() += 1;
        }
        c
    }

    fn moved(
        before: &BTreeMap<TopicPartition, WorkerId>,
        after: &BTreeMap<TopicPartition, WorkerId>,
    ) -> usize {
        before
            .iter()
            .filter(|(tp, w)| after.get(*tp).is_some_and(|a| a != *w))
            .count()
    }

    #[test]
    fn balances_and_moves_as_little_as_possible() {
        let parts = tps(6);
        let one = plan_assignment(&parts, &BTreeMap::new(), &[1]);
        assert_eq!(counts(&one), BTreeMap::from([(1, 6)]));
        // 1 → 3 workers: exactly the 4 partitions the new workers need move.
        let three = plan_assignment(&parts, &one, &[1, 2, 3]);
        assert_eq!(counts(&three), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
        assert_eq!(moved(&one, &three), 4);
        // 3 → 2 workers (3 leaves): only its 2 partitions move.
        let two = plan_assignment(&parts, &three, &[1, 2]);
        assert_eq!(counts(&two), BTreeMap::from([(1, 3), (2, 3)]));
        assert_eq!(moved(&three, &two), 2);
        // Same members: nothing moves.
        assert_eq!(plan_assignment(&parts, &two, &[1, 2]), two);
    }

    #[test]
    fn uneven_shares_go_to_current_holders_and_nothing_is_left_unowned() {
        let parts = tps(5);
        let current: BTreeMap<_, _> = parts.iter().map(|tp| (tp.clone(), 7)).collect();
        let plan = plan_assignment(&parts, &current, &[3, 7]);
        assert_eq!(plan.len(), 5);
        assert_eq!(counts(&plan), BTreeMap::from([(3, 2), (7, 3)]));
        assert_eq!(moved(&current, &plan), 2);
        assert!(plan_assignment(&parts, &current, &[]).is_empty());
    }
}

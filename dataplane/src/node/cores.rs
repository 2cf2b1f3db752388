//! Which logical CPUs the node's pinned threads get: ingress, executors and the sequencer.
//!
//! The rule works on physical cores (an SMT sibling set is one core) so two busy threads never
//! share one core's execution units when the machine has enough cores:
//!
//! - `P` physical cores; unless configured, `ingress = max(1, P / 4)` and
//!   `exec = max(1, P - ingress)`: on 2 cores 1 + 1, on 8 cores 2 + 6, on 64 cores 16 + 48.
//! - Ingress threads take the first physical cores, executor threads the next ones, each thread
//!   pinned to the first logical CPU of its core; counts larger than the machine wrap around.
//! - The sequencer (one thread: slots, signatures, group commit) is pinned to the SMT sibling of
//!   the first ingress core when there is one, else it shares that ingress core: it is fed by
//!   the ingress and its work is per message, like the ingress's.
//! - The HTTP verifier (one thread: batch signature checks of HTTP posts) is the HTTP API's
//!   ingress: it is pinned to the last ingress thread's CPU.
//!
//! A machine whose topology cannot be read falls back to the logical CPUs the process may run
//! on, each counted as a core. The plan is pure (a topology in, CPU ids out) and reported at
//! `/~meta@1.0/info` under `cores`.

use serde::Serialize;

/// The logical CPUs of each pinned thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CorePlan {
    /// One entry per ingress thread.
    pub ingress: Vec<usize>,
    /// One entry per executor thread.
    pub exec: Vec<usize>,
    /// The sequencer thread's CPU.
    pub sequencer: usize,
    /// The HTTP verifier thread's CPU.
    pub http_verify: usize,
}

impl CorePlan {
    /// The plan for `cores` (the SMT sibling sets of the physical cores, each sorted, listed by
    /// their first CPU) and the configured counts (0: the default rule).
    ///
    /// # Panics
    /// When `cores` is empty or holds an empty set (the caller always has at least its own CPU).
    pub fn new(cores: &[Vec<usize>], ingress_count: usize, exec_count: usize) -> Self {
        assert!(!cores.is_empty(), "at least one core");
        assert!(cores.iter().all(|set| !set.is_empty()), "no empty core");
        let physical = cores.len();
        let ingress_count = if ingress_count > 0 {
            ingress_count
        } else {
            (physical / 4).max(1)
        };
        let exec_count = if exec_count > 0 {
            exec_count
        } else {
            physical.saturating_sub(ingress_count).max(1)
        };
        let first = |index: usize| cores[index % physical][0];
        let ingress: Vec<usize> = (0..ingress_count).map(first).collect();
        let exec: Vec<usize> = (ingress_count..ingress_count + exec_count)
            .map(first)
            .collect();
        let sequencer = cores[0].get(1).copied().unwrap_or(cores[0][0]);
        let http_verify = *ingress.last().expect("at least one ingress thread");
        debug_assert_eq!(ingress.len(), ingress_count);
        debug_assert_eq!(exec.len(), exec_count);
        Self {
            ingress,
            exec,
            sequencer,
            http_verify,
        }
    }

    /// The plan for this machine: its topology from `hwdetect`, or else the CPUs this process
    /// may run on.
    pub fn detect(
        topology: Option<&ferrobeam_hwdetect::Topology>,
        ingress_count: usize,
        exec_count: usize,
    ) -> Self {
        Self::new(&physical_cores(topology), ingress_count, exec_count)
    }
}

/// Pins the calling thread to logical CPU `id`; a refusal (a CPU outside the process's
/// affinity mask) leaves it unpinned and is logged.
pub fn pin_current_thread(id: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
        tracing::warn!(cpu = id, "could not pin the thread");
    }
}

/// The physical cores the process may run on, as sorted sibling sets ordered by first CPU.
fn physical_cores(topology: Option<&ferrobeam_hwdetect::Topology>) -> Vec<Vec<usize>> {
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|core| core.id)
        .collect();
    let mut cores: Vec<Vec<usize>> = topology
        .map(|t| {
            t.smt_siblings
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|cpu| *cpu as usize)
                        .filter(|cpu| allowed.is_empty() || allowed.contains(cpu))
                        .collect::<Vec<_>>()
                })
                .filter(|set| !set.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if cores.is_empty() {
        cores = allowed.iter().map(|cpu| vec![*cpu]).collect();
    }
    if cores.is_empty() {
        cores.push(vec![0]);
    }
    for set in &mut cores {
        set.sort_unstable();
    }
    cores.sort_unstable();
    cores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_smt(count: usize) -> Vec<Vec<usize>> {
        (0..count).map(|cpu| vec![cpu]).collect()
    }

    #[test]
    fn the_default_split_follows_the_physical_cores() {
        let two = CorePlan::new(&no_smt(2), 0, 0);
        assert_eq!(two.ingress, vec![0]);
        assert_eq!(two.exec, vec![1]);
        assert_eq!(two.sequencer, 0);
        assert_eq!(two.http_verify, 0);
        let one = CorePlan::new(&no_smt(1), 0, 0);
        assert_eq!((one.ingress, one.exec), (vec![0], vec![0]));
        let eight = CorePlan::new(&no_smt(8), 0, 0);
        assert_eq!(eight.ingress, vec![0, 1]);
        assert_eq!(eight.exec, vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(eight.http_verify, 1, "the last ingress core");
        // 4 cores with SMT: siblings (0,4) (1,5) (2,6) (3,7); one thread per physical core,
        // the sequencer on the first ingress core's sibling.
        let smt: Vec<Vec<usize>> = (0..4).map(|core| vec![core, core + 4]).collect();
        let plan = CorePlan::new(&smt, 0, 0);
        assert_eq!(plan.ingress, vec![0]);
        assert_eq!(plan.exec, vec![1, 2, 3]);
        assert_eq!(plan.sequencer, 4);
    }

    #[test]
    fn configured_counts_win_and_wrap_around() {
        let plan = CorePlan::new(&no_smt(2), 2, 3);
        assert_eq!(plan.ingress, vec![0, 1]);
        assert_eq!(plan.exec, vec![0, 1, 0]);
        let plan = CorePlan::new(&no_smt(4), 0, 1);
        assert_eq!(plan.ingress, vec![0]);
        assert_eq!(plan.exec, vec![1]);
    }

    #[test]
    fn this_machine_has_a_plan_within_its_cpus() {
        let plan = CorePlan::detect(None, 0, 0);
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|core| core.id)
            .collect();
        assert!(!plan.ingress.is_empty() && !plan.exec.is_empty());
        for cpu in plan.ingress.iter().chain(&plan.exec) {
            assert!(allowed.is_empty() || allowed.contains(cpu), "cpu {cpu}");
        }
    }
}

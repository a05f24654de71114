//! Data-parallel runs over MPI: `mpirun -np N lora-tune RECIPE` starts N copies of the binary,
//! and this module says which rank this process is and carries the few collectives training
//! needs (sums, a maximum, a barrier). Nothing turns it on but the launcher: a process started
//! by mpirun / srun (its environment names the job's size) joins the job; any other process is a
//! job of one, and every collective is then the identity, so a plain run is what it always was.
//!
//! MPI itself comes from the `mpi` feature (rsmpi over the system's MPI library, Open MPI on
//! Debian). A binary built without it refuses to run under a launcher instead of training N
//! independent copies into one output folder.

use std::sync::OnceLock;

/// Where this process stands in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranks {
    /// This process's rank, 0..size.
    pub rank: usize,
    /// Processes in the job.
    pub size: usize,
    /// This process's rank among those on its machine (picks its GPU).
    pub local_rank: usize,
    /// Processes on this machine (they share its cores).
    pub local_size: usize,
}

impl Ranks {
    pub const SOLO: Self = Self {
        rank: 0,
        size: 1,
        local_rank: 0,
        local_size: 1,
    };

    /// Rank 0 prints, writes metrics, checkpoints and exports; the others only compute.
    pub fn leads(&self) -> bool {
        self.rank == 0
    }

    pub fn is_parallel(&self) -> bool {
        self.size > 1
    }

    /// Whether this rank computes item `index` of a list split round-robin across the job
    /// (a step's micro-batches, an evaluation's batches).
    pub fn owns(&self, index: usize) -> bool {
        index % self.size == self.rank
    }
}

static RANKS: OnceLock<Ranks> = OnceLock::new();
/// Set once this rank has made its last collective call (training is over on every rank).
static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This rank takes part in no more collectives: an error from here on (rank 0's export, or
/// its report of an interrupted run) ends the job by finalising, not by aborting it.
pub fn done_communicating() {
    DONE.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether other ranks may still be waiting for this one in a collective.
pub fn communicating() -> bool {
    !DONE.load(std::sync::atomic::Ordering::SeqCst)
}

/// This process's place in the job ([`Ranks::SOLO`] unless [`join`] joined an MPI job).
pub fn ranks() -> Ranks {
    RANKS.get().copied().unwrap_or(Ranks::SOLO)
}

/// The job size a launcher announced in the environment — Open MPI's mpirun, MPICH's Hydra or
/// Slurm's PMI-2 (`*_SIZE`), or a PMIx launch such as `srun --mpi=pmix` (`PMIX_RANK`, the size
/// in `SLURM_NTASKS`) — None when no launcher started this process.
pub fn launched_size() -> Option<usize> {
    let var = |k: &str| std::env::var(k).ok()?.parse::<usize>().ok();
    var("OMPI_COMM_WORLD_SIZE")
        .or_else(|| var("PMI_SIZE"))
        .or_else(|| var("PMIX_RANK").map(|_| var("SLURM_NTASKS").unwrap_or(0)))
}

/// Held by `main` for the whole run: dropping it finalises MPI (a rank that exits without
/// finalising makes mpirun report the job as failed).
pub struct Membership {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Membership {
    /// Ends the whole job after an error on this rank. Finalising instead would wait for ranks
    /// blocked in the step's all-reduce; mpirun then stops every rank and exits non-zero.
    pub fn abort(self, code: i32) -> ! {
        backend::abort(code)
    }
}

/// Joins the MPI job this process was launched into, if any; a plain process stays a job of one.
pub fn join() -> anyhow::Result<Membership> {
    let Some(size) = launched_size() else {
        return Ok(Membership {
            #[cfg(feature = "mpi")]
            _universe: None,
        });
    };
    backend::join(size)
}

#[cfg(feature = "mpi")]
mod backend {
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::{Membership, RANKS, Ranks};

    pub fn join(_announced: usize) -> anyhow::Result<Membership> {
        // Funneled: burn's worker threads never call MPI, only the training loop's thread does.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised in this process"))?;
        let world = universe.world();
        let local = world.split_shared(world.rank());
        let ranks = Ranks {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
        };
        let _ = RANKS.set(ranks);
        share_cores(ranks.local_size);
        if !ranks.leads() {
            quiet_stdout();
        }
        Ok(Membership {
            _universe: Some(universe),
        })
    }

    /// The ranks on one machine split its cores (burn's CPU backend and the SVDs run on rayon's
    /// global pool, which would otherwise start one thread per core in every rank), unless
    /// RAYON_NUM_THREADS says otherwise.
    fn share_cores(local_size: usize) {
        if local_size < 2 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = (cores / local_size).max(1);
        // Fails only if the pool already started, which nothing does before this.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }

    /// Rank 0 prints the run; the others' stdout goes to /dev/null (their errors still reach
    /// stderr, prefixed with their rank by `main`).
    fn quiet_stdout() {
        use std::os::fd::AsRawFd;
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            // SAFETY: dup2 onto fd 1 with a valid open descriptor; Rust's stdout keeps
            // writing to fd 1, now /dev/null.
            unsafe {
                libc::dup2(null.as_raw_fd(), 1);
            }
        }
    }

    fn world() -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    /// `values` reduced elementwise by `op` across the job, in place.
    fn all_reduce<T: Equivalence + Clone>(values: &mut [T], op: SystemOperation) {
        let send = values.to_vec();
        world().all_reduce_into(&send[..], values, op);
    }

    pub fn sum_f32(values: &mut [f32]) {
        all_reduce(values, SystemOperation::sum());
    }

    pub fn sum_f64(values: &mut [f64]) {
        all_reduce(values, SystemOperation::sum());
    }

    pub fn max_u64(values: &mut [u64]) {
        all_reduce(values, SystemOperation::max());
    }

    pub fn broadcast_f32(values: &mut [f32]) {
        world().process_at_rank(0).broadcast_into(values);
    }

    pub fn barrier() {
        world().barrier();
    }

    pub fn abort(code: i32) -> ! {
        world().abort(code)
    }
}

#[cfg(not(feature = "mpi"))]
mod backend {
    use super::Membership;

    pub fn join(size: usize) -> anyhow::Result<Membership> {
        anyhow::bail!(
            "started by an MPI launcher (a job of {size} ranks), but this binary was built without MPI; rebuild with `cargo build --release --features mpi` (needs Open MPI: apt install libopenmpi-dev openmpi-bin libclang-dev), or run it without mpirun"
        )
    }

    // A job of one: every collective is the identity.
    pub fn sum_f32(_: &mut [f32]) {}
    pub fn sum_f64(_: &mut [f64]) {}
    pub fn max_u64(_: &mut [u64]) {}
    pub fn broadcast_f32(_: &mut [f32]) {}
    pub fn barrier() {}
    pub fn abort(code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Elementwise sum across the job, in place (every rank gets the same values).
pub fn sum_f32(values: &mut [f32]) {
    if ranks().is_parallel() {
        backend::sum_f32(values);
    }
}

/// Elementwise sum across the job, in place.
pub fn sum_f64(values: &mut [f64]) {
    if ranks().is_parallel() {
        backend::sum_f64(values);
    }
}

/// Whether `flag` holds on any rank (so every rank takes the same branch).
pub fn any(flag: bool) -> bool {
    let mut v = [u64::from(flag)];
    if ranks().is_parallel() {
        backend::max_u64(&mut v);
    }
    v[0] == 1
}

/// Whether every rank holds the same `value` (a fingerprint of state that must not diverge).
pub fn agree(value: u64) -> bool {
    if !ranks().is_parallel() {
        return true;
    }
    // max(v) and max(!v) = !min(v) in one reduction.
    let mut v = [value, !value];
    backend::max_u64(&mut v);
    v[0] == !v[1]
}

/// Rank 0's `values` on every rank.
pub fn broadcast_f32(values: &mut [f32]) {
    if ranks().is_parallel() {
        backend::broadcast_f32(values);
    }
}

/// Waits until every rank gets here.
pub fn barrier() {
    if ranks().is_parallel() {
        backend::barrier();
    }
}

/// `f` on rank 0 first and on the others after it (rank 0 fills the shared model cache and
/// clears an old run, the rest read what it left instead of racing it). When `f` fails on rank
/// 0 the others do not repeat it: they return [`LeaderFailed`], which `main` does not print.
pub fn leader_first<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if ranks().leads() {
        let out = f();
        any(out.is_err()); // the others wait here for rank 0's outcome
        out
    } else if any(false) {
        Err(LeaderFailed.into())
    } else {
        f()
    }
}

/// Rank 0 failed before this rank started the same work; rank 0's message says why.
#[derive(Debug, thiserror::Error)]
#[error("rank 0 stopped the job (its message says why)")]
pub struct LeaderFailed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_gives_every_item_to_exactly_one_rank() {
        for size in 1..5 {
            for index in 0..11 {
                let owners = (0..size)
                    .filter(|&rank| {
                        Ranks {
                            rank,
                            size,
                            ..Ranks::SOLO
                        }
                        .owns(index)
                    })
                    .count();
                assert_eq!(owners, 1, "item {index} of a {size}-rank job");
            }
        }
    }

    #[test]
    fn a_job_of_one_reduces_to_itself() {
        let mut v = [1.5f32, -2.0];
        sum_f32(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        assert!(any(true) && !any(false) && agree(7));
    }
}

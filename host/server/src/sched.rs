//! How the server's own background threads are scheduled.
//!
//! The spool's and the status store's committers and the log writer wake
//! for every batch they are handed: thousands of times a second under load.
//! On Linux a woken thread normally preempts whatever runs on its CPU,
//! which is usually one of tokio's workers in the middle of a session; each
//! such preemption costs a context switch and the worker's caches. These
//! threads are started by [`spawn`] and run as `SCHED_BATCH`: same
//! priority and share of the CPU, but their wake-ups do not preempt a
//! running thread (they run when a worker waits or its time slice ends),
//! so the workers keep their CPUs.
//!
//! Measured at 64 sessions, connections reused (the README's "Background
//! threads that do not preempt"): the workers were preempted 0.67-0.86
//! times per message with the stock component, 0.20-0.22 after, and the
//! rate rose with and without a policy (+12-17% and +11-13%); with one
//! session a wake-up may wait for the worker to pause (a few percent).

/// Starts the background thread `name` running `f` (see the module).
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).spawn(|| {
        batch();
        f()
    })
}

/// Makes the calling thread `SCHED_BATCH`. A kernel that refuses it costs
/// nothing but the gain: logged once per thread, at debug.
fn batch() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's policy (pid 0); `param` outlives the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(cause = %e, "could not make this thread SCHED_BATCH");
        }
    }
}

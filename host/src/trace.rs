//! GPU time of every kernel launch while tracing is on ([`Runtime::trace_launches`]): an
//! event before and after each launch, read back in launch order. It gives a pass's kernels
//! as they run back to back, with the gaps between them, where a profiler replays each
//! kernel alone with its caches flushed (ncu) or is missing (`nsys` is not on the GPU
//! machines this project is measured on). Two kernels that are fast alone and slow in
//! sequence, or a host-side gap between launches, show here and nowhere else.
//!
//! Recording costs two event records per launch (and their creation): leave it off for timing
//! whole calls.
//!
//! [`Runtime::trace_launches`]: crate::Runtime::trace_launches

use crate::error::{Error, Result};
use cust::sys::{CUevent, CUstream};

/// One traced launch: the entry point, the GPU time between its two events, and the time since
/// the previous traced launch's end event (0 for the first; negative where the two ran on
/// different streams and overlapped).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LaunchTime {
    pub name: &'static str,
    pub ms: f32,
    pub gap_ms: f32,
}

/// The events of the launches traced so far, destroyed with it.
#[derive(Default)]
pub(crate) struct Trace {
    launches: Vec<(&'static str, CUevent, CUevent)>,
}

// SAFETY: event handles are valid in any thread with their context current (every launch and
// `Runtime::take_launch_trace` make it so); the trace is only touched under the runtime's mutex.
unsafe impl Send for Trace {}

impl Trace {
    /// Runs `launch` (one kernel launch on `stream`) between two events.
    pub(crate) fn around(
        &mut self,
        name: &'static str,
        stream: CUstream,
        launch: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let start = record(stream)?;
        let stop = launch().and_then(|()| record(stream));
        match stop {
            Ok(stop) => {
                self.launches.push((name, start, stop));
                Ok(())
            }
            Err(e) => {
                destroy(start);
                Err(e)
            }
        }
    }

    /// The launches in order, after waiting for each (the passes traced may have run on
    /// different streams).
    pub(crate) fn times(&self) -> Result<Vec<LaunchTime>> {
        let mut out = Vec::with_capacity(self.launches.len());
        let mut prev_stop = None;
        for &(name, start, stop) in &self.launches {
            // SAFETY: a live event of this trace.
            let code = unsafe { cust::sys::cuEventSynchronize(stop) };
            Error::check_driver("cuEventSynchronize", code)?;
            let ms = elapsed(start, stop)?;
            let gap_ms = match prev_stop {
                Some(p) => elapsed(p, start)?,
                None => 0.0,
            };
            out.push(LaunchTime { name, ms, gap_ms });
            prev_stop = Some(stop);
        }
        Ok(out)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        for &(_, start, stop) in &self.launches {
            destroy(start);
            destroy(stop);
        }
    }
}

fn record(stream: CUstream) -> Result<CUevent> {
    let mut event: CUevent = std::ptr::null_mut();
    // SAFETY: writes one handle; flags 0 = a timing event.
    Error::check_driver("cuEventCreate", unsafe {
        cust::sys::cuEventCreate(&mut event, 0)
    })?;
    // SAFETY: a live event and a stream of the current context (the caller's launch stream).
    let code = unsafe { cust::sys::cuEventRecord(event, stream) };
    if let Err(e) = Error::check_driver("cuEventRecord", code) {
        destroy(event);
        return Err(e);
    }
    Ok(event)
}

fn elapsed(start: CUevent, stop: CUevent) -> Result<f32> {
    let mut ms = 0f32;
    // SAFETY: two recorded events of this trace, `stop` complete (its stream was waited for).
    let code = unsafe { cust::sys::cuEventElapsedTime(&mut ms, start, stop) };
    Error::check_driver("cuEventElapsedTime", code)?;
    Ok(ms)
}

fn destroy(event: CUevent) {
    // SAFETY: an event this module created and destroys once. A failure leaks one handle.
    let _ = unsafe { cust::sys::cuEventDestroy_v2(event) };
}

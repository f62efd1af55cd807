//! `Stream`: the Python side of one request's events. Iterating blocks with the GIL released;
//! asyncio callers poll and register a waker that the engine thread fires when events arrive.
//!
//! The engine thread never takes the GIL: it wakes an event loop by writing the waiting task's
//! key to a pipe the loop watches (`LoopWaker`). Running Python code there (`loop.call_soon_threadsafe`)
//! could release the GIL inside the call, and if the interpreter began to finalize meanwhile,
//! CPython ended the thread with `pthread_exit`, whose unwinding through Rust frames aborted
//! the process at exit. Loops that cannot watch a file descriptor (Windows' proactor) still
//! get a callable.

use crate::errors::to_pyerr;
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tallow_core::engine::{CancelToken, Event, EventSink, FinishReason, Usage};

#[derive(Default)]
struct Inbox {
    events: VecDeque<Event>,
    /// Fired once (from the engine thread) when the next event arrives.
    waker: Option<Waker>,
    /// The consumer is gone: further events are refused, which cancels the request.
    closed: bool,
    finished: Option<(FinishReason, Usage)>,
}

pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    ready: Condvar,
    pub(crate) cancel: CancelToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Waker {
    /// A loop's pipe and the key of the task to wake there, written as 8 bytes (no GIL).
    Pipe(Arc<LoopPipe>, u64),
    /// A callable, called with the GIL.
    Call(Py<PyAny>),
}

impl Waker {
    fn fire(self) {
        match self {
            Waker::Pipe(pipe, key) => pipe.wake(key),
            Waker::Call(w) => Python::attach(|py| {
                if let Err(e) = w.call0(py) {
                    // The event loop may be closed; the consumer will see its own error.
                    e.write_unraisable(py, None);
                }
            }),
        }
    }
}

/// The write end of a loop's wake-up pipe.
struct LoopPipe {
    file: std::fs::File,
    /// A key was lost to a full pipe: the loop wakes every waiting task instead.
    overflowed: std::sync::atomic::AtomicBool,
}

impl LoopPipe {
    fn wake(&self, key: u64) {
        // Writes of 8 bytes to a pipe are atomic. A closed pipe has no loop left to wake.
        let full = |r: std::io::Result<usize>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        if full((&self.file).write(&key.to_le_bytes())) {
            // Flagged before the loop can have drained the pipe and looked; then a key 0 (no
            // task's), or, if the pipe is still full, its unread bytes, wake the loop after.
            self.overflowed.store(true, std::sync::atomic::Ordering::SeqCst);
            drop((&self.file).write(&0u64.to_le_bytes()));
        }
    }
}

/// The write end of a pipe whose read end an asyncio loop watches (`loop.add_reader`):
/// streams given it as their waker write their task's key to it, without the GIL, and the loop
/// wakes that task only.
#[pyclass(frozen, module = "tallow._tallow")]
pub struct LoopWaker {
    pipe: Arc<LoopPipe>,
}

#[pymethods]
impl LoopWaker {
    /// Takes ownership of `write_fd`, a non-blocking pipe's write end (closed with the last
    /// stream that holds it).
    #[new]
    fn new(write_fd: i32) -> PyResult<Self> {
        if write_fd < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("write_fd must be a file descriptor"));
        }
        #[cfg(unix)]
        // SAFETY: the caller hands the descriptor over (documented); it is not used elsewhere.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(write_fd) };
        #[cfg(not(unix))]
        let file: std::fs::File = {
            return Err(pyo3::exceptions::PyOSError::new_err("LoopWaker needs a POSIX pipe"));
        };
        Ok(LoopWaker { pipe: Arc::new(LoopPipe { file, overflowed: false.into() }) })
    }

    /// Whether a wake-up was lost to a full pipe since the last call (the loop then wakes all
    /// its waiting tasks, which poll their streams again).
    fn take_overflow(&self) -> bool {
        self.pipe.overflowed.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// The engine's end of a stream.
pub(crate) struct Sink(pub(crate) Arc<Shared>);

impl EventSink for Sink {
    fn send(&mut self, event: Event) -> bool {
        let waker = {
            let mut inbox = self.0.lock();
            if inbox.closed {
                return false;
            }
            inbox.events.push_back(event);
            inbox.waker.take()
        };
        self.0.ready.notify_all();
        if let Some(w) = waker {
            w.fire();
        }
        true
    }
}

pub(crate) fn new_pair() -> (Stream, Sink) {
    let shared =
        Arc::new(Shared { inbox: Mutex::new(Inbox::default()), ready: Condvar::new(), cancel: CancelToken::new() });
    (Stream { shared: shared.clone() }, Sink(shared))
}

/// A token's log-probability and its position's most likely tokens, `(id, logprob)`.
type Logprobs = (f32, Vec<(u32, f32)>);

/// One piece of generated output: `(text, token_id, logprobs)`; `token_id` is None for text
/// released at the end without a new token, `logprobs` None unless the request asked for them.
type Piece = (String, Option<u32>, Option<Logprobs>);

/// Events of one generation request. Iterate it for `(text, token_id, logprobs)` pieces.
#[pyclass(frozen, module = "tallow._tallow")]
pub struct Stream {
    shared: Arc<Shared>,
}

impl Stream {
    /// Converts the next queued event. `Ok(None)`: nothing queued yet.
    fn take(&self, py: Python<'_>, inbox: &mut Inbox) -> PyResult<Option<Piece>> {
        if inbox.finished.is_some() {
            return Err(PyStopIteration::new_err(()));
        }
        match inbox.events.pop_front() {
            None => Ok(None),
            Some(Event::Token { id, text, logprobs }) => {
                Ok(Some((text, Some(id), logprobs.map(|l| (l.logprob, l.top)))))
            }
            Some(Event::Text(text)) => Ok(Some((text, None, None))),
            Some(Event::Done { finish_reason, usage }) => {
                inbox.finished = Some((finish_reason, usage));
                Err(PyStopIteration::new_err(()))
            }
            Some(Event::Error(e)) => {
                inbox.finished = Some((FinishReason::Cancelled, Usage::default()));
                Err(to_pyerr(py, e))
            }
        }
    }

    fn close(&self) {
        self.shared.cancel.cancel();
        let mut inbox = self.shared.lock();
        inbox.closed = true;
        inbox.waker = None;
    }
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Blocks (GIL released) until the next piece. Ctrl-C cancels the request and raises
    /// KeyboardInterrupt.
    fn __next__(&self, py: Python<'_>) -> PyResult<Piece> {
        loop {
            {
                let mut inbox = self.shared.lock();
                if let Some(p) = self.take(py, &mut inbox)? {
                    return Ok(p);
                }
            }
            py.detach(|| {
                let inbox = self.shared.lock();
                if inbox.events.is_empty() {
                    let _ = self.shared.ready.wait_timeout(inbox, Duration::from_millis(50));
                }
            });
            if let Err(e) = py.check_signals() {
                self.close();
                return Err(e);
            }
        }
    }

    /// The next piece if one is ready, else None. Raises StopIteration at the end.
    fn poll(&self, py: Python<'_>) -> PyResult<Option<Piece>> {
        let mut inbox = self.shared.lock();
        self.take(py, &mut inbox)
    }

    /// Arranges for `waker` (a `LoopWaker`, which gets `key`, or a callable) to be fired once,
    /// from the engine thread, when an event is ready — now if one already is.
    #[pyo3(signature = (waker, key = 0))]
    fn set_waker(&self, waker: Bound<'_, PyAny>, key: u64) -> PyResult<()> {
        let waker = match waker.cast::<LoopWaker>() {
            Ok(w) => Waker::Pipe(w.get().pipe.clone(), key),
            Err(_) => Waker::Call(waker.unbind()),
        };
        let mut inbox = self.shared.lock();
        if inbox.events.is_empty() && inbox.finished.is_none() && !inbox.closed {
            inbox.waker = Some(waker);
            return Ok(());
        }
        drop(inbox);
        match waker {
            Waker::Call(w) => Python::attach(|py| w.call0(py).map(drop))?,
            pipe => pipe.fire(),
        }
        Ok(())
    }

    /// Stops the request at its next step. Idempotent.
    fn cancel(&self) {
        self.close();
    }

    /// `"stop"`, `"length"`, `"cancelled"`, or None while running.
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.shared.lock().finished.map(|(f, _)| f.as_str())
    }

    /// `(prompt_tokens, completion_tokens, cached_tokens)` once finished.
    #[getter]
    fn usage(&self) -> Option<(usize, usize, usize)> {
        self.shared.lock().finished.map(|(_, u)| (u.prompt_tokens, u.completion_tokens, u.cached_tokens))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // An abandoned stream frees its request.
        self.close();
    }
}

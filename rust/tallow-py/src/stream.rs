//! `Stream`: the Python side of one request's events. Iterating blocks with the GIL released;
//! asyncio callers poll and register a waker that the engine thread calls when events arrive.

use crate::errors::to_pyerr;
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tallow_core::engine::{CancelToken, Event, EventSink, FinishReason, Usage};

#[derive(Default)]
struct Inbox {
    events: VecDeque<Event>,
    /// Callable invoked once (from the engine thread) when the next event arrives.
    waker: Option<Py<PyAny>>,
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
            Python::attach(|py| {
                if let Err(e) = w.call0(py) {
                    // The event loop may be closed; the consumer will see its own error.
                    e.write_unraisable(py, None);
                }
            });
        }
        true
    }
}

pub(crate) fn new_pair() -> (Stream, Sink) {
    let shared =
        Arc::new(Shared { inbox: Mutex::new(Inbox::default()), ready: Condvar::new(), cancel: CancelToken::new() });
    (Stream { shared: shared.clone() }, Sink(shared))
}

/// One piece of generated output: `(text, token_id)`; `token_id` is None for text released
/// at the end without a new token.
type Piece = (String, Option<u32>);

/// Events of one generation request. Iterate it for `(text, token_id)` pieces.
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
            Some(Event::Token { id, text }) => Ok(Some((text, Some(id)))),
            Some(Event::Text(text)) => Ok(Some((text, None))),
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

    /// Arranges for `waker()` to be called once, from the engine thread, when an event is
    /// ready — immediately if one already is.
    fn set_waker(&self, py: Python<'_>, waker: Py<PyAny>) -> PyResult<()> {
        let call_now = {
            let mut inbox = self.shared.lock();
            if inbox.events.is_empty() && inbox.finished.is_none() && !inbox.closed {
                inbox.waker = Some(waker.clone_ref(py));
                false
            } else {
                true
            }
        };
        if call_now {
            waker.call0(py)?;
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

//! A thread that owns a loaded model and answers requests sent to it. llama.cpp contexts
//! are not shared between threads, so the generation engine and the dedicated embedder
//! each run on one of these.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use crate::{EngineError, Request, Response};

/// Where the model thread sends a request's result.
pub(crate) type Reply = SyncSender<Result<Response, EngineError>>;

pub(crate) enum Msg {
    Run(Box<Request>, Reply),
    /// Stop: fail what is still pending with [`EngineError::Stopped`] and exit.
    Shutdown,
}

/// Handle on a running model thread; dropping it stops the thread and waits for it.
pub(crate) struct ModelThread {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl ModelThread {
    /// Spawns a thread named `nrvna-{what}` running `main` and waits until `main` reports
    /// through its ready channel that it has loaded (with what it loaded) or failed.
    pub(crate) fn start<T, F>(what: &str, main: F) -> Result<(ModelThread, T), EngineError>
    where
        T: Send + 'static,
        F: FnOnce(Receiver<Msg>, SyncSender<Result<T, EngineError>>) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("nrvna-{what}"))
            .spawn(move || main(rx, ready_tx))
            .map_err(|e| EngineError::Config(format!("cannot start {what} thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(loaded)) => Ok((
                ModelThread {
                    tx,
                    thread: Some(thread),
                },
                loaded,
            )),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(EngineError::Config(format!(
                    "{what} thread died while loading"
                )))
            }
        }
    }

    /// Hands `request` to the thread and blocks until it answers.
    pub(crate) fn run(&self, request: Request) -> Result<Response, EngineError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Run(Box::new(request), reply))
            .map_err(|_| EngineError::Stopped)?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }
}

impl Drop for ModelThread {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

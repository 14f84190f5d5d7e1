//! Data registered with `Routes::worker_data` is made once per HTTP worker, on that worker's
//! thread: what lets command-api keep a request's PostgreSQL IO on the thread serving it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::ThreadId;
use std::time::Duration;

use actix_web::web;
use service_kit::health::Health;
use service_kit::http::Routes;
use service_kit::http::server::{self, ServerOptions};
use tokio_util::sync::CancellationToken;

/// Where the worker's data was made.
struct MadeOn(ThreadId);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_data_is_made_on_each_worker_and_used_there() {
    let made = Arc::new(AtomicUsize::new(0));
    let mut routes = Routes::new();
    let count = made.clone();
    routes.worker_data(move || {
        count.fetch_add(1, Ordering::SeqCst);
        web::Data::new(MadeOn(std::thread::current().id()))
    });
    let (configure, _) = routes.into_parts().expect("routes");
    let listener = server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let options = ServerOptions {
        workers: Some(2),
        grace: Duration::from_secs(1),
    };
    let health = Health::new("test");
    let srv = server::start(listener, options, health.clone(), move |cfg| {
        configure(cfg);
        cfg.route(
            "/made-here",
            web::get().to(|data: web::Data<MadeOn>| async move {
                (data.0 == std::thread::current().id()).to_string()
            }),
        );
    })
    .expect("server");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(server::run_until_cancelled(srv, health, shutdown.clone()));

    let http = reqwest::Client::new();
    let answers = futures::future::join_all((0..64).map(|_| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/made-here"))
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("body")
        }
    }))
    .await;
    assert!(
        answers.iter().all(|a| a == "true"),
        "every request used the data made on its own worker thread: {answers:?}"
    );
    assert_eq!(made.load(Ordering::SeqCst), 2, "made once per worker");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops")
        .expect("task")
        .expect("server");
}

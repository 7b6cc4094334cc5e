//! Embedding Karta: a host built in-process from a harness folder, one
//! session, one message, the event stream printed as it arrives.
//!
//! Run: `cargo run --example embed [APP_DIR]` (default `examples/hello`).

use karta_host::session::{MessageRequest, Published};
use karta_host::{Host, HostConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let app = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/hello".into());
    let data = tempfile::tempdir()?;

    // The embedded defaults: sled in `data`, the offline model, and the
    // harness the folder asks for when its binary is installed (else the
    // builtin loop; `config.harness` would force one).
    let mut config = HostConfig::new(&app);
    config.data_dir = data.path().to_path_buf();
    let host = Host::start(config).await?;
    println!(
        "serving `{}` in-process on the {} harness",
        host.app().name,
        host.harness_name()
    );

    let session = host.sessions().create(None, Default::default()).await?;
    let id = session.id;
    let turn = host
        .sessions()
        .send(
            &id,
            MessageRequest {
                text: "Hello from an embedder!".into(),
                ..MessageRequest::default()
            },
        )
        .await?;

    // Subscribe from just before the turn: every event of it, in order,
    // ending with `done`.
    let mut events = host.sessions().subscribe(&id, turn.after).await?;
    while let Some(item) = events.recv().await {
        match item {
            Published::Event(envelope) => println!(
                "{:>3} {:<12} {}",
                envelope.seq,
                envelope.event.kind(),
                serde_json::to_string(&envelope.event)?
            ),
            Published::Failed(error) => println!("the stream failed: {error:?}"),
        }
    }
    let summary = turn.finished.await?;
    println!("answer: {}", summary.text);
    Ok(())
}

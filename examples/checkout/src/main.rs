//! `checkout-service inventory|payment|shipping --listen ADDR --db URL`: one checkout service.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: checkout-service inventory|payment|shipping --listen 127.0.0.1:9001 --db 'host=127.0.0.1 user=postgres dbname=shop'");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(service), Some(listen), Some(db)) = (
        args.first().and_then(|s| s.parse::<concord_checkout::Service>().ok()),
        args.iter().position(|a| a == "--listen").and_then(|i| args.get(i + 1)),
        args.iter().position(|a| a == "--db").and_then(|i| args.get(i + 1)),
    ) else {
        return usage();
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        let client = concord_checkout::connect(service, db).await?;
        let listener =
            tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("{listen}: {e}"))?;
        println!("{} service on {listen}", service.name());
        tokio::select! {
            () = concord_checkout::serve(service, client, listener) => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `map-wrapper-ship`: ships a trail directory to PostgreSQL or NATS JetStream, and exports a
//! remote copy back to segment files for `map-wrapper-audit verify`.
//!
//! ```text
//! map-wrapper-ship ship   --trail ID --dir DIR (--postgres URL | --nats URL) [--once] [--migrate]
//! map-wrapper-ship export --trail ID --out DIR (--postgres URL | --nats URL)
//! map-wrapper-ship last   --trail ID (--postgres URL | --nats URL)
//! map-wrapper-ship checkpoint --trail ID (--postgres URL | --nats URL) [--out FILE]
//! map-wrapper-ship migrate --postgres URL
//! ```
//!
//! `checkpoint` writes the remote's newest signed checkpoint of the trail (a note) to stdout
//! or `FILE`, to check the local trail against it:
//! `map-wrapper-audit verify --pubkey KEY --checkpoint FILE DIR` (TAMPERED if the trail no
//! longer holds what the remote's checkpoint covers).
//!
//! Exit status: 0 done, 1 a refusal or error (message on stderr; `checkpoint`: also when the
//! remote holds none), 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use map_wrapper_ship::{RemoteSink, Shipper, ShipperConfig, Until};

#[derive(Parser)]
#[command(
    name = "map-wrapper-ship",
    version,
    about = "Ship a map-wrapper audit trail to PostgreSQL or NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Remote {
    /// PostgreSQL URL (`postgresql://user@host:port/db?connect_timeout=5`); needs the `postgres` feature.
    #[arg(long)]
    postgres: Option<String>,
    /// NATS URL (`nats://host:4222`); needs the `nats` feature.
    #[arg(long)]
    nats: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Follow a trail directory and ship every record (until killed, or `--once`).
    Ship {
        /// The trail id the remote copy is keyed by.
        #[arg(long)]
        trail: String,
        /// The trail directory.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        remote: Remote,
        /// Return once every complete record on disk is shipped.
        #[arg(long)]
        once: bool,
        /// Create or update the PostgreSQL schema first (as the table's owner).
        #[arg(long)]
        migrate: bool,
    },
    /// Write the remote copy of a trail into segment files in a new directory.
    Export {
        /// The trail id.
        #[arg(long)]
        trail: String,
        /// The directory to write (must hold no segment files).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the remote's last seq for a trail (0 when it holds none).
    Last {
        /// The trail id.
        #[arg(long)]
        trail: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print (or write to `--out`) the remote's newest signed checkpoint of a trail: the note
    /// to give `map-wrapper-audit verify --pubkey KEY --checkpoint FILE`.
    Checkpoint {
        /// The trail id.
        #[arg(long)]
        trail: String,
        #[command(flatten)]
        remote: Remote,
        /// Write the note to this file (replaced) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create or update the PostgreSQL schema.
    Migrate {
        /// PostgreSQL URL.
        #[arg(long)]
        postgres: String,
    },
}

fn sink(remote: &Remote, migrate: bool) -> Result<Box<dyn RemoteSink>, String> {
    if let Some(url) = &remote.postgres {
        #[cfg(feature = "postgres")]
        {
            let mut s = map_wrapper_ship::postgres::PostgresSink::new(url.clone());
            if migrate {
                s.migrate().map_err(|e| e.to_string())?;
            }
            return Ok(Box::new(s));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(format!("--postgres {url}: this binary was built without the `postgres` feature"));
    }
    let url = remote.nats.as_deref().unwrap_or_default();
    let _ = migrate;
    #[cfg(feature = "nats")]
    return Ok(Box::new(map_wrapper_ship::nats::NatsSink::new(url).map_err(|e| e.to_string())?));
    #[cfg(not(feature = "nats"))]
    Err(format!("--nats {url}: this binary was built without the `nats` feature"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Ship { trail, dir, remote, once, migrate } => {
            let sink = sink(&remote, migrate)?;
            let mut shipper =
                Shipper::new(ShipperConfig::new(trail, dir), sink).map_err(|e| e.to_string())?;
            let until = if once { Until::CaughtUp } else { Until::Stopped };
            let s = shipper.run(until).map_err(|e| e.to_string())?;
            eprintln!(
                "shipped {} records and {} checkpoints; remote last seq {}; {} retries",
                s.shipped, s.checkpoints, s.last_seq, s.retries
            );
            Ok(())
        }
        Cmd::Export { trail, out, remote } => {
            let mut sink = sink(&remote, false)?;
            let x = map_wrapper_ship::export(&mut sink, &trail, &out).map_err(|e| e.to_string())?;
            eprintln!(
                "exported {} records in {} segments and {} checkpoints to {} (last seq {})",
                x.records,
                x.segments,
                x.checkpoints,
                out.display(),
                x.last_seq
            );
            Ok(())
        }
        Cmd::Last { trail, remote } => {
            let mut sink = sink(&remote, false)?;
            println!("{}", sink.last_acked(&trail).map_err(|e| e.to_string())?.unwrap_or(0));
            Ok(())
        }
        Cmd::Checkpoint { trail, remote, out } => {
            let mut sink = sink(&remote, false)?;
            let Some(cp) = sink.latest_checkpoint(&trail).map_err(|e| e.to_string())? else {
                return Err(format!("the remote holds no checkpoint of {trail}"));
            };
            match out {
                Some(path) => {
                    std::fs::write(&path, cp.note()).map_err(|e| format!("{}: {e}", path.display()))
                }
                None => {
                    print!("{}", cp.note());
                    Ok(())
                }
            }
        }
        Cmd::Migrate { postgres } => sink(&Remote { postgres: Some(postgres), nats: None }, true).map(drop),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("map-wrapper-ship: {e}");
            ExitCode::FAILURE
        }
    }
}

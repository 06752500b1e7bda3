//! `switchyard wit [--out DIR]`: the contract this binary serves, the WIT
//! files it was built from, printed or written out (for a plugin built
//! outside this repository, or in another language).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

/// Every file of the `switchyard:handler` package, as compiled in.
pub const FILES: [(&str, &str); 8] = [
    ("world.wit", include_str!("../../../wit/world.wit")),
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("event.wit", include_str!("../../../wit/event.wit")),
    ("outcome.wit", include_str!("../../../wit/outcome.wit")),
    ("cache.wit", include_str!("../../../wit/cache.wit")),
    ("graph.wit", include_str!("../../../wit/graph.wit")),
    ("log.wit", include_str!("../../../wit/log.wit")),
    ("config.wit", include_str!("../../../wit/config.wit")),
];

#[derive(Args)]
pub struct WitArgs {
    /// Write the files into this directory (created if missing) instead of
    /// printing them.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: WitArgs) -> anyhow::Result<ExitCode> {
    match args.out {
        None => {
            for (name, text) in FILES {
                println!("// ---- {name}\n{}", text.trim_end());
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, text) in FILES {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!("wrote {} WIT files to {}", FILES.len(), dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

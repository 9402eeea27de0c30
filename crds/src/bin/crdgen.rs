//! Prints or writes the CRD YAML generated from the Rust types.
//! `crdgen` prints every CRD to stdout; `crdgen --write DIR` writes one file per CRD
//! (`ingestionpipeline.yaml`, `compactionpolicy.yaml`).

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--write"), Some(dir)) => {
            for (name, yaml) in tidewater_crds::crd_files() {
                std::fs::write(std::path::Path::new(&dir).join(name), yaml)?;
            }
            Ok(())
        }
        (None, None) => {
            print!("{}", tidewater_crds::render_crds());
            Ok(())
        }
        _ => {
            eprintln!("usage: crdgen [--write DIR]");
            std::process::exit(2)
        }
    }
}

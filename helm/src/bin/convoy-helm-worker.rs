//! The Helm render worker: one JSON request on stdin, one JSON reply on
//! stdout (see `convoy_helm::protocol`). Started by `convoy_helm::Renderer`
//! under a time and memory bound; not meant to be run by hand.

fn main() {
    std::process::exit(convoy_helm::worker::serve(std::io::stdin().lock(), std::io::stdout().lock()));
}

//! A fixture: a valid WASI command component that exports no
//! `karta:plugin/tools`. Loading it as a plugin must fail with a clear error.

fn main() {
    println!("I am a command, not a plugin.");
}

//! The result of an app's setup script, as every session's harness sees it.
//!
//! `[environment] setup` runs once per app version (the host's
//! `karta_host::setup`), in a jail whose `HOME` is a directory of the data
//! dir, `<data_dir>/setup/<app hash>/home`. What the script left there —
//! `pip install --user` packages under `.local`, a venv, downloaded tools
//! in `bin` — is the *layer*. Sessions do not get a copy: the layer is bound
//! **read-only into each harness's jail at the path it was built at**, and
//! the process's environment points at it:
//!
//! - `KARTA_SETUP_HOME` — the layer itself (for instructions that name a
//!   venv or a tool there: `$KARTA_SETUP_HOME/venv/bin/python`);
//! - `PYTHONUSERBASE=$KARTA_SETUP_HOME/.local` — Python's user site is the
//!   layer's, so `pip install --user` packages import as they did in the
//!   script;
//! - `PATH` starts with `$KARTA_SETUP_HOME/.local/bin` and
//!   `$KARTA_SETUP_HOME/bin`.
//!
//! Why a bind at the same path rather than a copy into each session's
//! `HOME`: what installers write holds absolute paths (a venv's
//! `pyvenv.cfg` and script shebangs, `pip`'s entry points), which stay true
//! only at the path they were written at; a bind costs nothing per session
//! where a copy of a few hundred MiB would cost seconds; and read-only, one
//! session cannot change what the next one starts from. The session's own
//! `HOME` stays its own and writable.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A finished setup script's `HOME`, shared read-only by every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupLayer {
    /// The directory (absolute); bound read-only at the same path.
    pub home: PathBuf,
}

impl SetupLayer {
    /// Points `env` at the layer: `KARTA_SETUP_HOME`, `PYTHONUSERBASE`, and
    /// the layer's `bin` directories in front of `PATH`.
    pub fn apply(&self, env: &mut BTreeMap<String, String>) {
        let home = self.home.display().to_string();
        let bins = format!("{home}/.local/bin:{home}/bin");
        let path = match env.get("PATH") {
            Some(path) if !path.is_empty() => format!("{bins}:{path}"),
            _ => format!("{bins}:/usr/local/bin:/usr/bin:/bin"),
        };
        env.insert("PATH".to_owned(), path);
        env.insert("PYTHONUSERBASE".to_owned(), format!("{home}/.local"));
        env.insert("KARTA_SETUP_HOME".to_owned(), home);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_comes_first_on_the_path() {
        let layer = SetupLayer {
            home: PathBuf::from("/data/setup/abc/home"),
        };
        let mut env = BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]);
        layer.apply(&mut env);
        assert_eq!(
            env["PATH"],
            "/data/setup/abc/home/.local/bin:/data/setup/abc/home/bin:/usr/bin:/bin"
        );
        assert_eq!(env["PYTHONUSERBASE"], "/data/setup/abc/home/.local");
        assert_eq!(env["KARTA_SETUP_HOME"], "/data/setup/abc/home");
    }
}

//! Karta's own app files, `karta.toml` and `karta.jsonc`, read as Karta
//! documents them, beside this host's extensions.
//!
//! | file | Karta's keys | this host's extensions |
//! | --- | --- | --- |
//! | `karta.toml` | `name`, `deploy`, `[harness] type`/`version`, `[env]`, `[environment] setup` (run by [`crate::setup`]), `[genui]`, `buildpack`/`entry_point` (refused) | `harness = "…"` as a string, `[[plugins]]` (path, limits, grants, `approval`) |
//! | `karta.jsonc` | `runtime.permission_mode`; `cli.*`, `harness.claude.*`, `profile.*` are known and not used | — |
//!
//! Apps written for Karta must load unchanged, and Karta adds keys over
//! time, so a key neither Karta nor this host knows is a warning naming it
//! and its line ([`UnknownKey`]), not a refusal: the typo safety of
//! `deny_unknown_fields` without refusing tomorrow's apps. Unknown keys are
//! removed before the typed read, so the strict structs underneath (a
//! plugin's `limits`) never see them.
//!
//! `[env]` declares names (`NAME = { required, description, default }`) or
//! binds them (`NAME = "value"`). A declared name is bound from, in order:
//! the operator's environment (the host process's), a `.env` file beside
//! the app (dev mode, which is the only mode of this host today; parsed
//! with `dotenvy` without touching the host's own environment), the
//! `default`. A `required` name left unbound refuses the app, naming it.
//! Names the host sets itself for a harness process (`ANTHROPIC_*`, `PATH`,
//! … see [`RESERVED_ENV_PREFIXES`]) are never bound from anywhere: the
//! host provides them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use karta_harness::process::RESERVED_ENV_PREFIXES;
use karta_harness::safe_fs::{Kind, SafeDir};
use serde::Deserialize;
use serde::de::{self, IntoDeserializer, MapAccess, Visitor};

use super::{AppError, HarnessKind, PluginEntry, error, line_of, read_optional, resolved_kind};

/// A key in `karta.toml` or `karta.jsonc` that neither Karta nor this host
/// knows: warned about and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// The file.
    pub file: PathBuf,
    /// The line (1-based), when known.
    pub line: Option<usize>,
    /// The key's path (`runtime.permision_mode`, `plugins[0].limits.fule`).
    pub key: String,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.file_name().map_or_else(
            || self.file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match self.line {
            Some(line) => write!(f, "{file}:{line}: unknown key `{}` (ignored)", self.key),
            None => write!(f, "{file}: unknown key `{}` (ignored)", self.key),
        }
    }
}

/// How a turn's tool calls are approved (`karta.jsonc`
/// `runtime.permission_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum PermissionMode {
    /// Ask a person for what the app's settings do not allow (Karta calls
    /// it `"interactive"`; `"default"` is accepted too).
    #[default]
    #[serde(rename = "default", alias = "interactive")]
    Default,
    /// The harness's own tools and the app's MCP servers run without
    /// asking (a plugin with `approval = "always"` still asks: that is the
    /// app's explicit word for that plugin).
    #[serde(rename = "autonomous")]
    Autonomous,
}

impl PermissionMode {
    /// The name shown by `karta doctor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default (ask for what the app's settings do not allow)",
            Self::Autonomous => {
                "autonomous (the harness's tools and the app's MCP servers run without asking; plugins with `approval = \"always\"` still ask)"
            }
        }
    }
}

/// Where an `[env]` name's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// The app's own `karta.toml` (`NAME = "value"`).
    App,
    /// The operator's environment (the host process's).
    Operator,
    /// The `.env` file beside the app.
    DotEnv,
    /// The declaration's `default`.
    Default,
    /// A name the host sets itself for a harness process; the app's value,
    /// if any, is not used.
    Host,
}

impl EnvSource {
    /// How `karta doctor` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "karta.toml",
            Self::Operator => "operator environment",
            Self::DotEnv => ".env",
            Self::Default => "default",
            Self::Host => "set by the host",
        }
    }
}

/// One `[env]` name and how it was bound: never its value, so this can be
/// shown and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The name.
    pub name: String,
    /// What it is for (the declaration's `description`).
    pub description: Option<String>,
    /// Whether the app refuses to load without it.
    pub required: bool,
    /// Where its value came from; `None` when it is unbound (and optional).
    pub source: Option<EnvSource>,
}

/// Where `[env]` values come from besides the app's own files.
#[derive(Debug, Clone, Default)]
pub enum OperatorEnv {
    /// The host process's environment.
    #[default]
    Process,
    /// These values (tests, and embedders that keep their own).
    Map(BTreeMap<String, String>),
}

impl OperatorEnv {
    fn get(&self, name: &str) -> Option<String> {
        match self {
            Self::Process => std::env::var(name).ok(),
            Self::Map(map) => map.get(name).cloned(),
        }
    }
}

/// What `karta.toml` and `karta.jsonc` gave, for [`super::load`].
#[derive(Debug, Default)]
pub(super) struct KartaFiles {
    pub name: Option<String>,
    pub deploy: Option<bool>,
    pub harness: Option<HarnessKind>,
    pub harness_version: Option<String>,
    pub plugins: Vec<PluginEntry>,
    pub env: BTreeMap<String, String>,
    pub env_vars: Vec<EnvVar>,
    pub setup_script: Option<PathBuf>,
    pub genui: Option<toml::Value>,
    pub permission_mode: PermissionMode,
    pub unknown_keys: Vec<UnknownKey>,
    pub notices: Vec<String>,
}

/// Reads `karta.toml`, `karta.jsonc` and (when `[env]` declares names)
/// `.env` from the app in `dir`.
pub(super) fn read(dir: &SafeDir, operator: &OperatorEnv) -> Result<KartaFiles, AppError> {
    let root = dir.path();
    let mut files = KartaFiles::default();
    if let Some(text) = read_optional(dir, "karta.toml")? {
        read_toml(dir, &root.join("karta.toml"), &text, operator, &mut files)?;
    }
    if let Some(text) = read_optional(dir, "karta.jsonc")? {
        read_jsonc(&root.join("karta.jsonc"), &text, &mut files)?;
    }
    for key in &files.unknown_keys {
        tracing::warn!("{key}");
    }
    for notice in &files.notices {
        tracing::info!("{notice}");
    }
    Ok(files)
}

/// What a key is to this host.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Read by the host (its type is checked by the typed read).
    Used,
    /// Known to Karta, accepted, not used by this host.
    Unused,
    /// Anything inside is accepted (`[genui]`: kept as it is).
    Open,
    /// A table of these keys (checked only when the value is a table).
    Table(&'static [(&'static str, Shape)]),
    /// A table of names to values of one shape (`[env]`).
    Map(&'static Shape),
    /// An array of values of one shape (`[[plugins]]`).
    Array(&'static Shape),
}

use Shape::{Array, Map, Open, Table, Unused, Used};

/// `[[plugins]] limits`: kept in step with `crate::plugin::Limits` (a test
/// checks it), or a real limit would be dropped as unknown.
const LIMITS_KEYS: &[(&str, Shape)] = &[
    ("fuel", Used),
    ("memory_mib", Used),
    ("timeout_ms", Used),
    ("max_output_bytes", Used),
];

/// `[[plugins]]`: the fields of `PluginEntry`.
const PLUGIN_KEYS: &[(&str, Shape)] = &[
    ("path", Used),
    ("component", Used),
    ("name", Used),
    ("approval", Used),
    ("limits", Table(LIMITS_KEYS)),
    ("workspace", Used),
    ("allowed_hosts", Used),
];

const ENV_DECL_KEYS: &[(&str, Shape)] =
    &[("required", Used), ("description", Used), ("default", Used)];

const TOML_KEYS: &[(&str, Shape)] = &[
    ("name", Used),
    ("deploy", Used),
    ("harness", Table(&[("type", Used), ("version", Used)])),
    ("env", Map(&Table(ENV_DECL_KEYS))),
    ("environment", Table(&[("setup", Used)])),
    ("genui", Open),
    ("buildpack", Used),
    ("entry_point", Used),
    ("plugins", Array(&Table(PLUGIN_KEYS))),
];

/// Karta's documented `karta.jsonc` (its "Configuration" page).
const JSONC_KEYS: &[(&str, Shape)] = &[
    ("$schema", Unused),
    (
        "cli",
        Table(&[
            ("hidden_event_types", Unused),
            ("input_required_policy", Unused),
            ("input_required_hidden_policy", Unused),
        ]),
    ),
    (
        "harness",
        Table(&[(
            "claude",
            Table(&[
                ("idle_timeout_seconds", Unused),
                ("thinking_budget_tokens", Unused),
                ("permission_intercept", Unused),
                ("agent_command", Unused),
            ]),
        )]),
    ),
    ("runtime", Table(&[("permission_mode", Used)])),
    (
        "profile",
        Table(&[("name", Unused), ("display_name", Unused)]),
    ),
];

fn shape_of(fields: &[(&str, Shape)], key: &str) -> Option<Shape> {
    fields
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, shape)| *shape)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// What a walk over a file found: unknown keys (with their lines), known
/// keys this host does not use, and the line of every key read.
#[derive(Default)]
struct Walk {
    unknown: Vec<(String, usize)>,
    unused: Vec<String>,
    lines: BTreeMap<String, usize>,
}

impl Walk {
    fn line(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }
}

/// Walks a `karta.toml` table, removing the keys it does not know.
fn walk_toml(
    table: &mut toml::de::DeTable<'_>,
    fields: &[(&str, Shape)],
    prefix: &str,
    text: &str,
    walk: &mut Walk,
) {
    let mut drop = Vec::new();
    for (key, value) in table.iter_mut() {
        let name: &str = key.get_ref();
        let path = join(prefix, name);
        let line = line_of(text, key.span().start);
        walk.lines.insert(path.clone(), line);
        match shape_of(fields, name) {
            None => {
                walk.unknown.push((path, line));
                drop.push(name.to_owned());
            }
            Some(shape) => walk_toml_value(value.get_mut(), shape, &path, text, walk),
        }
    }
    for name in drop {
        table.remove(name.as_str());
    }
}

fn walk_toml_value(
    value: &mut toml::de::DeValue<'_>,
    shape: Shape,
    path: &str,
    text: &str,
    walk: &mut Walk,
) {
    use toml::de::DeValue;
    match (shape, value) {
        (Unused, _) => walk.unused.push(path.to_owned()),
        (Table(fields), DeValue::Table(table)) => walk_toml(table, fields, path, text, walk),
        (Map(inner), DeValue::Table(table)) => {
            for (key, value) in table.iter_mut() {
                let name: &str = key.get_ref();
                let path = join(path, name);
                walk.lines
                    .insert(path.clone(), line_of(text, key.span().start));
                walk_toml_value(value.get_mut(), *inner, &path, text, walk);
            }
        }
        (Array(inner), DeValue::Array(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk_toml_value(item.get_mut(), *inner, &format!("{path}[{i}]"), text, walk);
            }
        }
        // Used and Open values, and values of another type than expected
        // (the typed read says what is wrong with those).
        _ => {}
    }
}

/// Walks a `karta.jsonc` object. Unknown keys need not be removed: the
/// structs it is read into ignore them.
fn walk_jsonc(
    object: &jsonc_parser::ast::Object<'_>,
    fields: &[(&str, Shape)],
    prefix: &str,
    text: &str,
    walk: &mut Walk,
) {
    use jsonc_parser::ast::Value;
    for prop in &object.properties {
        let name = prop.name.as_str();
        let path = join(prefix, name);
        let line = line_of(text, prop.range.start);
        walk.lines.insert(path.clone(), line);
        match (shape_of(fields, name), &prop.value) {
            (None, _) => walk.unknown.push((path, line)),
            (Some(Unused), _) => walk.unused.push(path),
            (Some(Table(fields)), Value::Object(inner)) => {
                walk_jsonc(inner, fields, &path, text, walk)
            }
            _ => {}
        }
    }
}

/// `karta.toml` as read, once unknown keys are removed.
#[derive(Debug, Default, Deserialize)]
struct KartaToml {
    name: Option<String>,
    deploy: Option<bool>,
    harness: Option<HarnessField>,
    #[serde(default)]
    plugins: Vec<PluginEntry>,
    #[serde(default)]
    env: BTreeMap<String, EnvEntry>,
    environment: Option<Environment>,
    genui: Option<toml::Value>,
    buildpack: Option<toml::Spanned<toml::Value>>,
    entry_point: Option<toml::Spanned<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct Environment {
    setup: Option<toml::Spanned<PathBuf>>,
}

/// `harness = "claude-code"` (ours) or `[harness] type = "claude-code"`,
/// `version = "2"` (Karta's).
#[derive(Debug)]
struct HarnessField {
    kind: Option<HarnessKind>,
    version: Option<String>,
}

#[derive(Deserialize)]
struct HarnessTable {
    #[serde(rename = "type")]
    kind: Option<HarnessKind>,
    version: Option<Scalar>,
}

impl<'de> Deserialize<'de> for HarnessField {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HarnessField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a harness name or a table with `type` and `version`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HarnessField, E> {
                Ok(HarnessField {
                    kind: Some(HarnessKind::deserialize(v.into_deserializer())?),
                    version: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HarnessField, A::Error> {
                let table = HarnessTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(HarnessField {
                    kind: table.kind,
                    version: table.version.map(|v| v.0),
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A string, or a number or boolean taken as its text (`version = 2`,
/// `PORT = { default = 8080 }`).
#[derive(Debug)]
struct Scalar(String);

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(v.to_owned()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One `[env]` entry: a value (`NAME = "value"`) or a declaration.
#[derive(Debug)]
enum EnvEntry {
    Value(String),
    Declared(EnvDecl),
}

#[derive(Debug, Deserialize)]
struct EnvDecl {
    #[serde(default)]
    required: bool,
    description: Option<String>,
    default: Option<Scalar>,
}

impl<'de> Deserialize<'de> for EnvEntry {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value, or a table with `required`, `description` and `default`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvEntry, E> {
                Ok(EnvEntry::Value(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvEntry, E> {
                Ok(EnvEntry::Value(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvEntry, E> {
                Ok(EnvEntry::Value(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvEntry, E> {
                Ok(EnvEntry::Value(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvEntry, E> {
                Ok(EnvEntry::Value(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnvEntry, A::Error> {
                EnvDecl::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(EnvEntry::Declared)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The unknown keys of `file`, in the order of their lines (a TOML table
/// is walked in key order).
fn unknown_keys(file: &Path, walk: &Walk) -> Vec<UnknownKey> {
    let mut unknown = walk.unknown.clone();
    unknown.sort_by_key(|(_, line)| *line);
    unknown
        .iter()
        .map(|(key, line)| UnknownKey {
            file: file.to_path_buf(),
            line: Some(*line),
            key: key.clone(),
        })
        .collect()
}

fn read_toml(
    dir: &SafeDir,
    file: &Path,
    text: &str,
    operator: &OperatorEnv,
    out: &mut KartaFiles,
) -> Result<(), AppError> {
    let toml_error = |e: toml::de::Error| {
        let line = e.span().map(|span| line_of(text, span.start));
        error(file, line, e.message().to_owned())
    };
    let mut table = toml::de::DeTable::parse(text).map_err(toml_error)?;
    let mut walk = Walk::default();
    walk_toml(table.get_mut(), TOML_KEYS, "", text, &mut walk);
    out.unknown_keys.extend(unknown_keys(file, &walk));
    let config = KartaToml::deserialize(toml::de::Deserializer::from(table)).map_err(toml_error)?;

    // Karta's builder runs a Python (or other) program for these; this
    // host runs the harness a folder configures, and nothing else.
    for (key, value) in [
        ("buildpack", &config.buildpack),
        ("entry_point", &config.entry_point),
    ] {
        if let Some(value) = value {
            return Err(error(
                file,
                Some(line_of(text, value.span().start)),
                format!(
                    "`{key}` is not supported: Karta host serves only harness apps (CLAUDE.md / AGENTS.md folders)"
                ),
            ));
        }
    }

    out.name = config.name;
    out.deploy = config.deploy;
    if let Some(harness) = config.harness {
        out.harness = harness.kind;
        out.harness_version = harness.version;
    }
    out.plugins = config.plugins;

    if let Some(setup) = config.environment.and_then(|e| e.setup) {
        let line = Some(line_of(text, setup.span().start));
        let relative = setup.into_inner();
        // Checked now, so the app that declares it fails at load rather
        // than when setup scripts are run; it must be a file of the app.
        let shown = relative.display().to_string();
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(error(
                file,
                line,
                format!("setup script `{shown}` must be a path inside the app folder"),
            ));
        }
        match resolved_kind(dir, &relative)? {
            Some(Kind::File(_)) => {}
            Some(_) => {
                return Err(error(
                    file,
                    line,
                    format!("setup script `{shown}` is not a file"),
                ));
            }
            None => {
                return Err(error(
                    file,
                    line,
                    format!("setup script `{shown}` does not exist"),
                ));
            }
        }
        // Run by `crate::setup` when the host starts, once per app version;
        // `karta doctor` has a line of its own for it.
        out.setup_script = Some(relative);
    }
    if config.genui.is_some() {
        out.notices
            .push("karta.toml: [genui] is kept but not used by this host".to_owned());
        out.genui = config.genui;
    }
    if !walk.unused.is_empty() {
        out.notices.push(format!(
            "karta.toml: not used by this host: {}",
            walk.unused.join(", ")
        ));
    }

    let (env, vars) = bind_env(dir, file, config.env, &walk, operator)?;
    out.env = env;
    out.env_vars = vars;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
struct KartaJsonc {
    #[serde(default)]
    runtime: RuntimeSection,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeSection {
    permission_mode: Option<PermissionMode>,
}

fn read_jsonc(file: &Path, text: &str, out: &mut KartaFiles) -> Result<(), AppError> {
    let options = jsonc_parser::ParseOptions::default();
    let parse_error = |e: jsonc_parser::errors::ParseError| {
        error(
            file,
            Some(e.line_display()),
            format!("invalid JSONC: {}", e.kind()),
        )
    };
    let ast =
        jsonc_parser::parse_to_ast(text, &Default::default(), &options).map_err(parse_error)?;
    let mut walk = Walk::default();
    match &ast.value {
        None => {}
        Some(jsonc_parser::ast::Value::Object(object)) => {
            walk_jsonc(object, JSONC_KEYS, "", text, &mut walk)
        }
        Some(_) => return Err(error(file, Some(1), "expected an object")),
    }
    out.unknown_keys.extend(unknown_keys(file, &walk));
    if !walk.unused.is_empty() {
        out.notices.push(format!(
            "karta.jsonc: Karta settings not used by this host: {}",
            walk.unused.join(", ")
        ));
    }
    let value: serde_json::Value =
        jsonc_parser::parse_to_serde_value(text, &options).map_err(parse_error)?;
    if value.is_null() {
        return Ok(());
    }
    let settings: KartaJsonc = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        error(file, walk.line(&path), format!("`{path}`: {}", e.inner()))
    })?;
    out.permission_mode = settings.runtime.permission_mode.unwrap_or_default();
    Ok(())
}

/// Whether the host sets `name` itself for a harness process.
fn set_by_host(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    RESERVED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// Binds `[env]`: see the module documentation for the order.
fn bind_env(
    dir: &SafeDir,
    file: &Path,
    entries: BTreeMap<String, EnvEntry>,
    walk: &Walk,
    operator: &OperatorEnv,
) -> Result<(BTreeMap<String, String>, Vec<EnvVar>), AppError> {
    let line = |name: &str| walk.line(&format!("env.{name}"));
    // Read only when a name is declared: a `.env` the app does not use
    // cannot refuse it.
    let dotenv = if entries.values().any(|e| matches!(e, EnvEntry::Declared(_))) {
        read_dotenv(dir)?
    } else {
        BTreeMap::new()
    };
    let mut env = BTreeMap::new();
    let mut vars = Vec::new();
    let mut missing = Vec::new();
    for (name, entry) in entries {
        // A process environment cannot hold these.
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(error(
                file,
                line(&name),
                format!("[env] `{name}` is not a valid variable name"),
            ));
        }
        let (description, required, bound) = match entry {
            EnvEntry::Value(value) => (None, false, Some((value, EnvSource::App))),
            EnvEntry::Declared(decl) => {
                let bound = if set_by_host(&name) {
                    None
                } else {
                    // The host's own settings (`KARTA_UPSTREAM_KEY`, …) never
                    // reach an app, whatever it declares.
                    let operator = (!name.to_ascii_uppercase().starts_with("KARTA_"))
                        .then(|| operator.get(&name))
                        .flatten()
                        .map(|v| (v, EnvSource::Operator));
                    operator
                        .or_else(|| dotenv.get(&name).map(|v| (v.clone(), EnvSource::DotEnv)))
                        .or_else(|| decl.default.map(|v| (v.0, EnvSource::Default)))
                };
                (decl.description, decl.required, bound)
            }
        };
        if set_by_host(&name) {
            if bound
                .as_ref()
                .is_some_and(|(_, source)| *source == EnvSource::App)
            {
                tracing::warn!(
                    "karta.toml: ignoring `{name}` from [env]: the host sets it for harness processes"
                );
            }
            vars.push(EnvVar {
                name,
                description,
                required,
                source: Some(EnvSource::Host),
            });
            continue;
        }
        let source = match bound {
            Some((value, source)) => {
                if value.contains('\0') {
                    return Err(error(
                        file,
                        line(&name),
                        format!(
                            "[env] `{name}`: the value ({}) holds a NUL character",
                            source.as_str()
                        ),
                    ));
                }
                env.insert(name.clone(), value);
                Some(source)
            }
            None if required => {
                missing.push(match &description {
                    Some(d) => format!("`{name}` ({d})"),
                    None => format!("`{name}`"),
                });
                None
            }
            None => None,
        };
        vars.push(EnvVar {
            name,
            description,
            required,
            source,
        });
    }
    if let Some(first) = vars.iter().find(|v| v.required && v.source.is_none()) {
        let names = missing.join(", ");
        let message = if missing.len() == 1 {
            format!("[env] {names} is required but not bound")
        } else {
            format!("[env] {names} are required but not bound")
        };
        return Err(error(
            file,
            line(&first.name),
            format!("{message}: set it in the host's environment or in a .env file beside the app"),
        ));
    }
    Ok((env, vars))
}

/// The `.env` beside the app, parsed without touching the host's own
/// environment.
fn read_dotenv(dir: &SafeDir) -> Result<BTreeMap<String, String>, AppError> {
    let file = dir.path().join(".env");
    let Some(text) = read_optional(dir, ".env")? else {
        return Ok(BTreeMap::new());
    };
    // dotenvy expands `$NAME` and `${NAME}` from the host process's
    // environment first: a `.env` in an app folder could copy the host's
    // own secrets into the app's. Literal `$` is written single-quoted.
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') {
            continue;
        }
        let value = trimmed
            .split_once('=')
            .map_or(trimmed, |(_, v)| v.trim_start());
        if !value.starts_with('\'') && has_substitution(line) {
            return Err(error(
                &file,
                Some(i + 1),
                "`$` substitution is not supported (it would read the host's environment); single-quote a literal `$`",
            ));
        }
    }
    let mut values = BTreeMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        let (name, value) = item.map_err(|e| match e {
            dotenvy::Error::LineParse(line, at) => error(
                &file,
                None,
                format!("cannot parse `{line}` at character {at}"),
            ),
            other => error(&file, None, format!("cannot read: {other}")),
        })?;
        values.insert(name, value);
    }
    Ok(values)
}

/// Whether `line` has a `$` that is not escaped with a backslash.
fn has_substitution(line: &str) -> bool {
    let mut escaped = false;
    for c in line.chars() {
        match c {
            '\\' => escaped = !escaped,
            '$' if !escaped => return true,
            _ => escaped = false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{AppSpec, load_with_env};

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn operator(pairs: &[(&str, &str)]) -> OperatorEnv {
        OperatorEnv::Map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn app_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "CLAUDE.md", "Be brief.");
        for (path, text) in files {
            write(dir.path(), path, text);
        }
        dir
    }

    fn load_app(files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<AppSpec, AppError> {
        let dir = app_with(files);
        load_with_env(dir.path(), &operator(env))
    }

    fn source_of(app: &AppSpec, name: &str) -> Option<EnvSource> {
        app.env_vars
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.source)
    }

    #[test]
    fn the_karta_shaped_example_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/karta-shaped");
        let app = load_with_env(&root, &operator(&[("SUPPORT_EMAIL", "help@example.com")]))
            .expect("loads");
        assert_eq!(app.name, "karta-shaped");
        assert_eq!(app.deploy, Some(true));
        assert_eq!(app.harness, HarnessKind::ClaudeCode);
        assert_eq!(app.harness_version.as_deref(), Some("2"));
        assert_eq!(app.permission_mode, PermissionMode::Autonomous);
        assert_eq!(app.setup_script.as_deref(), Some(Path::new("setup.sh")));
        assert!(app.genui.is_some());
        assert!(app.unknown_keys.is_empty(), "{:?}", app.unknown_keys);
        assert_eq!(app.env["SUPPORT_EMAIL"], "help@example.com");
        assert_eq!(app.env["LOG_LEVEL"], "info");
        assert_eq!(app.env["APP_GREETING"], "Hello from Beans");
        assert!(!app.env.contains_key("ORDER_API_TOKEN"));
        assert_eq!(source_of(&app, "SUPPORT_EMAIL"), Some(EnvSource::Operator));
        assert_eq!(source_of(&app, "LOG_LEVEL"), Some(EnvSource::Default));
        assert_eq!(source_of(&app, "APP_GREETING"), Some(EnvSource::App));
        assert_eq!(source_of(&app, "ORDER_API_TOKEN"), None);
        assert!(app.agents.contains_key("shipping"));
        let notices = app.notices.join("\n");
        for expected in ["[genui]", "cli.hidden_event_types"] {
            assert!(
                notices.contains(expected),
                "missing `{expected}`: {notices}"
            );
        }
    }

    #[test]
    fn unknown_keys_warn_with_their_lines_and_do_not_refuse() {
        let app = load_app(
            &[
                (
                    "karta.toml",
                    "name = \"x\"\nregion = \"eu\"\n[harness]\ntype = \"opencode\"\nflavour = \"x\"\n\
                     [env]\nA = { required = false, secret = true, default = \"1\" }\n\
                     [[plugins]]\npath = \"p.wasm\"\n[plugins.limits]\nfule = 5\nfuel = 10\n",
                ),
                ("p.wasm", "not read at load"),
                (
                    "karta.jsonc",
                    "{\n  // a comment\n  \"runtime\": { \"permision_mode\": \"autonomous\" },\n  \"telemetry\": true\n}\n",
                ),
            ],
            &[],
        )
        .expect("unknown keys do not refuse the app");
        let found: Vec<(String, Option<usize>, String)> = app
            .unknown_keys
            .iter()
            .map(|k| {
                let file = k
                    .file
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (file, k.line, k.key.clone())
            })
            .collect();
        let expected = [
            ("karta.toml", 2, "region"),
            ("karta.toml", 5, "harness.flavour"),
            ("karta.toml", 7, "env.A.secret"),
            ("karta.toml", 11, "plugins[0].limits.fule"),
            ("karta.jsonc", 3, "runtime.permision_mode"),
            ("karta.jsonc", 4, "telemetry"),
        ];
        let expected: Vec<(String, Option<usize>, String)> = expected
            .iter()
            .map(|(f, l, k)| ((*f).to_owned(), Some(*l), (*k).to_owned()))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(
            app.unknown_keys[0].to_string(),
            "karta.toml:2: unknown key `region` (ignored)"
        );
        // What is known is still read: the limits beside the typo, the harness.
        assert_eq!(app.plugins[0].grant.limits.fuel, 10);
        assert_eq!(app.harness, HarnessKind::Opencode);
        assert_eq!(app.env["A"], "1");
        assert_eq!(
            app.permission_mode,
            PermissionMode::Default,
            "a misspelt key is not read"
        );
    }

    #[test]
    fn a_required_unbound_env_name_fails_naming_it_and_its_description() {
        let e = load_app(
            &[(
                "karta.toml",
                "[env]\nFINE = { default = \"x\" }\nAPI_KEY = { required = true, description = \"The order API key\" }\n",
            )],
            &[],
        )
        .expect_err("unbound");
        assert!(e.file.ends_with("karta.toml"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(
            e.message
                .contains("`API_KEY` (The order API key) is required but not bound"),
            "{e}"
        );
        assert!(e.message.contains(".env"), "says where to bind it: {e}");
    }

    #[test]
    fn env_sources_in_order_operator_then_dotenv_then_default() {
        let toml = "[env]\n\
            A = { required = true }\nB = { required = true }\nC = { default = \"c-default\" }\n\
            D = { default = \"d-default\" }\nKARTA_UPSTREAM_KEY = { required = false }\n\
            ANTHROPIC_API_KEY = { required = true }\nPLAIN = \"plain\"\n";
        let dotenv = "# dev values\nA=from-dotenv\nB=\"b from dotenv\"\nexport C='c-dotenv'\nPLAIN=ignored\nKARTA_UPSTREAM_KEY=dev\n";
        let app = load_app(
            &[("karta.toml", toml), (".env", dotenv)],
            &[
                ("A", "from-operator"),
                ("KARTA_UPSTREAM_KEY", "the host's secret"),
                ("ANTHROPIC_API_KEY", "k"),
            ],
        )
        .expect("loads");
        assert_eq!(
            app.env["A"], "from-operator",
            "the operator's environment wins over .env"
        );
        assert_eq!(app.env["B"], "b from dotenv", ".env binds a required name");
        assert_eq!(app.env["C"], "c-dotenv", ".env wins over the default");
        assert_eq!(app.env["D"], "d-default");
        assert_eq!(
            app.env["PLAIN"], "plain",
            "a value in karta.toml is the app's own"
        );
        assert_eq!(
            app.env["KARTA_UPSTREAM_KEY"], "dev",
            "the host's own settings never reach an app"
        );
        assert!(
            !app.env.contains_key("ANTHROPIC_API_KEY"),
            "the host sets it"
        );
        assert_eq!(source_of(&app, "ANTHROPIC_API_KEY"), Some(EnvSource::Host));
        assert_eq!(source_of(&app, "A"), Some(EnvSource::Operator));
        assert_eq!(source_of(&app, "B"), Some(EnvSource::DotEnv));
        assert!(
            std::env::var("B").is_err(),
            "the .env does not reach the host's environment"
        );
    }

    #[test]
    fn dotenv_substitution_is_refused() {
        let e = load_app(
            &[
                ("karta.toml", "[env]\nA = { required = true }\n"),
                (".env", "OK='a $literal'\nA=${KARTA_UPSTREAM_KEY}\n"),
            ],
            &[],
        )
        .expect_err("substitution");
        assert!(e.file.ends_with(".env") && e.line == Some(2), "{e}");
        assert!(e.message.contains("substitution"), "{e}");
    }

    #[test]
    fn buildpack_and_entry_point_are_refused_plainly() {
        for key in ["buildpack = \"python\"", "entry_point = \"app:app\""] {
            let e =
                load_app(&[("karta.toml", &format!("name = \"x\"\n{key}\n"))], &[]).expect_err(key);
            assert_eq!(e.line, Some(2), "{e}");
            assert!(
                e.message.contains("not supported: Karta host serves only harness apps (CLAUDE.md / AGENTS.md folders)"),
                "{e}"
            );
        }
    }

    #[test]
    fn karta_jsonc_with_comments_and_trailing_commas_parses() {
        let jsonc = "/* Karta settings */\n{\n  // how tools are approved\n  \"runtime\": {\n    \"permission_mode\": \"autonomous\", // unattended\n  },\n  \"harness\": { \"claude\": { \"idle_timeout_seconds\": 600 } },\n  \"profile\": { \"name\": \"alice\" },\n}\n";
        let app = load_app(&[("karta.jsonc", jsonc)], &[]).expect("loads");
        assert_eq!(app.permission_mode, PermissionMode::Autonomous);
        assert!(app.unknown_keys.is_empty(), "{:?}", app.unknown_keys);
        // Karta's default name, and ours.
        for mode in ["interactive", "default"] {
            let text = format!("{{\"runtime\": {{\"permission_mode\": \"{mode}\"}}}}");
            let app = load_app(&[("karta.jsonc", &text)], &[]).expect("loads");
            assert_eq!(app.permission_mode, PermissionMode::Default);
        }
        // Alone, without a karta.toml, and empty.
        let app = load_app(&[("karta.jsonc", "// nothing yet\n")], &[]).expect("loads");
        assert_eq!(app.permission_mode, PermissionMode::Default);

        let e = load_app(
            &[(
                "karta.jsonc",
                "{\n  \"runtime\": {\n    \"permission_mode\": \"yolo\"\n  }\n}",
            )],
            &[],
        )
        .expect_err("bad mode");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(
            e.message.contains("runtime.permission_mode") && e.message.contains("yolo"),
            "{e}"
        );
        let e = load_app(&[("karta.jsonc", "{\n  \"runtime\": {\n}")], &[]).expect_err("unclosed");
        assert!(e.file.ends_with("karta.jsonc") && e.line.is_some(), "{e}");
    }

    #[test]
    fn both_harness_forms_are_read() {
        let app = load_app(&[("karta.toml", "harness = \"opencode\"\n")], &[]).expect("ours");
        assert_eq!(app.harness, HarnessKind::Opencode);
        let app = load_app(
            &[("karta.toml", "[harness]\ntype = \"builtin\"\nversion = 2\n")],
            &[],
        )
        .expect("Karta's");
        assert_eq!(app.harness, HarnessKind::Builtin);
        assert_eq!(app.harness_version.as_deref(), Some("2"));
        let e = load_app(&[("karta.toml", "\n[harness]\ntype = \"codex\"\n")], &[])
            .expect_err("unknown harness");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("codex"), "{e}");
    }

    #[test]
    fn a_setup_script_must_be_a_file_of_the_app() {
        for (setup, message) in [
            ("missing.sh", "does not exist"),
            ("../outside.sh", "inside the app folder"),
            ("/bin/sh", "inside the app folder"),
            (".claude", "not a file"),
        ] {
            let toml = format!("[environment]\nsetup = \"{setup}\"\n");
            let e = load_app(&[("karta.toml", &toml), (".claude/agents/a.md", "hi")], &[])
                .expect_err(setup);
            assert_eq!(e.line, Some(2), "{e}");
            assert!(e.message.contains(message), "{setup}: {e}");
        }
    }

    #[test]
    fn limits_keys_follow_the_plugin_limits() {
        let limits = toml::Table::try_from(crate::plugin::Limits::default()).expect("serializes");
        let known: Vec<&str> = LIMITS_KEYS.iter().map(|(k, _)| *k).collect();
        for key in limits.keys() {
            assert!(
                known.contains(&key.as_str()),
                "`{key}` of Limits is missing from LIMITS_KEYS"
            );
        }
    }

    #[test]
    fn only_unescaped_dollars_substitute() {
        assert!(has_substitution("A=${B}"));
        assert!(has_substitution("A=\"x $B\""));
        assert!(!has_substitution("A=\\$B"));
        assert!(!has_substitution("A=plain"));
    }
}

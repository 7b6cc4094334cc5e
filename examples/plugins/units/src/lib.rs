//! `units` — unit conversion and arithmetic for an agent that must not guess.
//!
//! Tools:
//! - `convert`: a value between units of length, mass, volume, time, data,
//!   speed and temperature (`{"value": 3, "from": "mi", "to": "km"}`).
//! - `calc`: an arithmetic expression with `+ - * / ^ %`, parentheses, unary
//!   minus, and `sqrt`, `abs`, `ln`, `log10`, `round` (`{"expression": "2^10 / (3 + 1)"}`).
//!
//! Build: `cargo build --manifest-path examples/plugins/Cargo.toml --target wasm32-wasip2 --release`
//! Try:   `karta tool call examples/plugins/target/wasm32-wasip2/release/units.wasm convert '{"value":3,"from":"mi","to":"km"}'`

use karta_guest::{ToolError, export_plugin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod expr;

/// Input of `convert`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvertInput {
    /// The quantity to convert.
    pub value: f64,
    /// The unit of `value`, e.g. `km`, `lb`, `degF`, `GiB`, `mph`.
    pub from: String,
    /// The unit to convert to; must measure the same dimension as `from`.
    pub to: String,
}

/// Output of `convert`.
#[derive(Serialize, Debug, PartialEq)]
pub struct ConvertOutput {
    /// The converted quantity.
    pub value: f64,
    /// The target unit, as given.
    pub unit: String,
    /// What the units measure (`length`, `mass`, …).
    pub dimension: &'static str,
}

/// A unit: its dimension and how to reach the dimension's base unit.
struct Unit {
    names: &'static [&'static str],
    dimension: &'static str,
    /// base = value * scale + offset
    scale: f64,
    offset: f64,
}

const fn unit(names: &'static [&'static str], dimension: &'static str, scale: f64) -> Unit {
    Unit {
        names,
        dimension,
        scale,
        offset: 0.0,
    }
}

const UNITS: &[Unit] = &[
    // length, base metre
    unit(&["m", "meter", "metre", "meters", "metres"], "length", 1.0),
    unit(
        &["km", "kilometer", "kilometre", "kilometers", "kilometres"],
        "length",
        1000.0,
    ),
    unit(
        &["cm", "centimeter", "centimetre", "centimeters"],
        "length",
        0.01,
    ),
    unit(
        &["mm", "millimeter", "millimetre", "millimeters"],
        "length",
        0.001,
    ),
    unit(&["mi", "mile", "miles"], "length", 1609.344),
    unit(&["yd", "yard", "yards"], "length", 0.9144),
    unit(&["ft", "foot", "feet"], "length", 0.3048),
    unit(&["in", "inch", "inches"], "length", 0.0254),
    unit(
        &["nmi", "nautical_mile", "nautical_miles"],
        "length",
        1852.0,
    ),
    // mass, base kilogram
    unit(&["kg", "kilogram", "kilograms"], "mass", 1.0),
    unit(&["g", "gram", "grams"], "mass", 0.001),
    unit(&["mg", "milligram", "milligrams"], "mass", 1e-6),
    unit(&["t", "tonne", "tonnes"], "mass", 1000.0),
    unit(&["lb", "lbs", "pound", "pounds"], "mass", 0.453_592_37),
    unit(&["oz", "ounce", "ounces"], "mass", 0.028_349_523_125),
    unit(&["st", "stone"], "mass", 6.350_293_18),
    // volume, base litre
    unit(
        &["l", "L", "liter", "litre", "liters", "litres"],
        "volume",
        1.0,
    ),
    unit(&["ml", "mL", "milliliter", "millilitre"], "volume", 0.001),
    unit(&["m3", "cubic_meter"], "volume", 1000.0),
    unit(&["gal", "gallon", "gallons"], "volume", 3.785_411_784),
    unit(&["qt", "quart", "quarts"], "volume", 0.946_352_946),
    unit(&["cup", "cups"], "volume", 0.236_588_236_5),
    unit(
        &["floz", "fl_oz", "fluid_ounce"],
        "volume",
        0.029_573_529_562_5,
    ),
    // time, base second
    unit(&["s", "sec", "second", "seconds"], "time", 1.0),
    unit(&["ms", "millisecond", "milliseconds"], "time", 0.001),
    unit(&["min", "minute", "minutes"], "time", 60.0),
    unit(&["h", "hr", "hour", "hours"], "time", 3600.0),
    unit(&["d", "day", "days"], "time", 86_400.0),
    unit(&["wk", "week", "weeks"], "time", 604_800.0),
    // data, base byte
    unit(&["B", "byte", "bytes"], "data", 1.0),
    unit(&["bit", "bits"], "data", 0.125),
    unit(&["kB", "KB", "kilobyte"], "data", 1e3),
    unit(&["MB", "megabyte"], "data", 1e6),
    unit(&["GB", "gigabyte"], "data", 1e9),
    unit(&["TB", "terabyte"], "data", 1e12),
    unit(&["KiB", "kibibyte"], "data", 1024.0),
    unit(&["MiB", "mebibyte"], "data", 1_048_576.0),
    unit(&["GiB", "gibibyte"], "data", 1_073_741_824.0),
    unit(&["TiB", "tebibyte"], "data", 1_099_511_627_776.0),
    // speed, base metre per second
    unit(&["m/s", "mps"], "speed", 1.0),
    unit(&["km/h", "kph", "kmh"], "speed", 1000.0 / 3600.0),
    unit(&["mph"], "speed", 0.447_04),
    unit(&["kn", "knot", "knots"], "speed", 1852.0 / 3600.0),
    // temperature, base kelvin
    Unit {
        names: &["K", "kelvin"],
        dimension: "temperature",
        scale: 1.0,
        offset: 0.0,
    },
    Unit {
        names: &["degC", "C", "celsius"],
        dimension: "temperature",
        scale: 1.0,
        offset: 273.15,
    },
    Unit {
        names: &["degF", "F", "fahrenheit"],
        dimension: "temperature",
        scale: 5.0 / 9.0,
        offset: 273.15 - 32.0 * 5.0 / 9.0,
    },
];

fn find_unit(name: &str) -> Option<&'static Unit> {
    let name = name.trim();
    UNITS.iter().find(|u| u.names.contains(&name)).or_else(|| {
        UNITS
            .iter()
            .find(|u| u.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    })
}

/// Converts between units of one dimension.
pub fn convert(input: ConvertInput) -> Result<ConvertOutput, ToolError> {
    let unknown = |which: &str, name: &str| {
        ToolError::invalid_input(format!(
            "unknown unit `{name}` in `{which}`; known units include m, km, mi, ft, kg, lb, l, gal, s, h, B, MiB, km/h, mph, degC, degF, K"
        ))
    };
    let from = find_unit(&input.from).ok_or_else(|| unknown("from", &input.from))?;
    let to = find_unit(&input.to).ok_or_else(|| unknown("to", &input.to))?;
    if from.dimension != to.dimension {
        return Err(ToolError::invalid_input(format!(
            "cannot convert {} (`{}`) to {} (`{}`)",
            from.dimension, input.from, to.dimension, input.to
        )));
    }
    if !input.value.is_finite() {
        return Err(ToolError::invalid_input("`value` must be a finite number"));
    }
    let base = input.value * from.scale + from.offset;
    let value = (base - to.offset) / to.scale;
    Ok(ConvertOutput {
        value: round_sig(value),
        unit: input.to,
        dimension: from.dimension,
    })
}

/// Rounds to 12 significant digits, hiding binary floating-point noise
/// (`0.30000000000000004`) that would only confuse a model.
fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 12 - x.abs().log10().ceil() as i32;
    let factor = 10f64.powi(digits);
    (x * factor).round() / factor
}

/// Input of `calc`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalcInput {
    /// An arithmetic expression, e.g. `2 * (3 + 4) ^ 2 / sqrt(16)`.
    pub expression: String,
}

/// Output of `calc`.
#[derive(Serialize, Debug, PartialEq)]
pub struct CalcOutput {
    /// The value of the expression.
    pub value: f64,
}

/// Evaluates an arithmetic expression.
pub fn calc(input: CalcInput) -> Result<CalcOutput, ToolError> {
    if input.expression.len() > 10_000 {
        return Err(ToolError::invalid_input(
            "the expression is longer than 10000 characters",
        ));
    }
    let value = expr::evaluate(&input.expression).map_err(ToolError::invalid_input)?;
    if !value.is_finite() {
        return Err(ToolError::failed(format!(
            "the result is not a finite number ({value})"
        )));
    }
    Ok(CalcOutput {
        value: round_sig(value),
    })
}

export_plugin! {
    tool("convert", "Converts a quantity between units of length, mass, volume, time, data size, speed or temperature.", convert),
    tool("calc", "Evaluates an arithmetic expression exactly as written (+ - * / ^ %, parentheses, sqrt, abs, ln, log10, round).", calc),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(value: f64, from: &str, to: &str) -> f64 {
        convert(ConvertInput {
            value,
            from: from.into(),
            to: to.into(),
        })
        .unwrap()
        .value
    }

    #[test]
    fn converts_within_dimensions() {
        assert_eq!(conv(3.0, "mi", "km"), 4.828032);
        assert_eq!(conv(100.0, "degC", "degF"), 212.0);
        assert_eq!(conv(-40.0, "F", "C"), -40.0);
        assert_eq!(conv(1.0, "GiB", "MiB"), 1024.0);
        assert_eq!(conv(0.1 + 0.2, "m", "m"), 0.3);
    }

    #[test]
    fn refuses_mixed_dimensions_and_unknown_units() {
        let e = convert(ConvertInput {
            value: 1.0,
            from: "kg".into(),
            to: "m".into(),
        })
        .unwrap_err();
        assert!(matches!(e, ToolError::InvalidInput(m) if m.contains("mass")));
        assert!(
            convert(ConvertInput {
                value: 1.0,
                from: "parsec".into(),
                to: "m".into()
            })
            .is_err()
        );
    }

    #[test]
    fn calculates() {
        assert_eq!(
            calc(CalcInput {
                expression: "2 * (3 + 4) ^ 2 / sqrt(16)".into()
            })
            .unwrap()
            .value,
            24.5
        );
        assert!(
            calc(CalcInput {
                expression: "1 / 0".into()
            })
            .is_err()
        );
    }
}

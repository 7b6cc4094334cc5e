//! Prices: what a model call or a tool call costs, in integer micro-units
//! (1 micro-unit = 1/1,000,000 of a currency unit; the meter does not
//! care which currency).
//!
//! Model prices are per million tokens of each kind, the tool price per
//! million units of wasmtime fuel. A cost is computed once, when a record
//! is written, and stored with it: changing the prices never changes what
//! was billed.
//!
//! Arithmetic is integer only: the products are summed in `u128` (a `u64`
//! count times a `u64` price cannot overflow it) and divided by 1,000,000
//! **once per record, rounding up**, so a record is never billed less
//! than its exact price and at most one micro-unit more. A cost beyond
//! `u64::MAX` saturates.
//!
//! A price table in TOML (every key optional; an absent key keeps the
//! built-in value, and a `[models]` table replaces the built-in models):
//!
//! ```toml
//! fuel_per_mfuel = 1
//!
//! [default_model]   # any model no entry matches
//! input_per_mtok = 3_000_000
//! output_per_mtok = 15_000_000
//! cache_read_per_mtok = 300_000
//! cache_write_per_mtok = 3_750_000
//!
//! [models."claude-haiku-4-5"]
//! input_per_mtok = 1_000_000
//! output_per_mtok = 5_000_000
//! cache_read_per_mtok = 100_000
//! cache_write_per_mtok = 1_250_000
//!
//! [models."claude-sonnet-4"]
//! input_per_mtok = 3_000_000
//! output_per_mtok = 15_000_000
//! cache_read_per_mtok = 300_000
//! cache_write_per_mtok = 3_750_000
//!
//! # A call whose prompt is over 200,000 tokens is priced this way instead,
//! # its output too (Anthropic's long-context prices).
//! [models."claude-sonnet-4".long_context]
//! above_prompt_tokens = 200_000
//! input_per_mtok = 6_000_000
//! output_per_mtok = 22_500_000
//! cache_read_per_mtok = 600_000
//! cache_write_per_mtok = 7_500_000
//! ```
//!
//! A call's *prompt* is every input token of it, cached or not; a model
//! without a `long_context` table has one price whatever its prompt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::MeterError;
use super::ledger::UsageKind;

/// Micro-units per million: the divisor of every price.
const PER_MILLION: u128 = 1_000_000;

/// What one model costs, in micro-units per million tokens of each kind.
/// Every price is required in TOML: a price left out would bill as free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Per million uncached input tokens.
    pub input_per_mtok: u64,
    /// Per million output tokens.
    pub output_per_mtok: u64,
    /// Per million input tokens read from the provider's cache.
    pub cache_read_per_mtok: u64,
    /// Per million input tokens written to the provider's cache.
    pub cache_write_per_mtok: u64,
    /// The prices of a call with a long prompt, when the model has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextPrice>,
}

/// A model's prices for a call whose prompt (every input token of it,
/// cached or not) is over `above_prompt_tokens`: they replace the base
/// prices for the whole call, its output included, as Anthropic bills a
/// Sonnet 4 call over 200,000 tokens. Every field is required in TOML.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextPrice {
    /// The prompt size these prices start above, in tokens.
    pub above_prompt_tokens: u64,
    /// Per million uncached input tokens.
    pub input_per_mtok: u64,
    /// Per million output tokens.
    pub output_per_mtok: u64,
    /// Per million input tokens read from the provider's cache.
    pub cache_read_per_mtok: u64,
    /// Per million input tokens written to the provider's cache.
    pub cache_write_per_mtok: u64,
}

impl ModelPrice {
    /// Claude Sonnet 4.x list prices in micro-dollars: $3 in, $15 out,
    /// $0.30 cache read, $3.75 cache write (5-minute) per million tokens;
    /// a call whose prompt is over 200,000 tokens (the 1M-token context)
    /// $6 in, $22.50 out, $0.60 cache read, $7.50 cache write.
    pub const SONNET_4: ModelPrice = ModelPrice {
        input_per_mtok: 3_000_000,
        output_per_mtok: 15_000_000,
        cache_read_per_mtok: 300_000,
        cache_write_per_mtok: 3_750_000,
        long_context: Some(LongContextPrice {
            above_prompt_tokens: 200_000,
            input_per_mtok: 6_000_000,
            output_per_mtok: 22_500_000,
            cache_read_per_mtok: 600_000,
            cache_write_per_mtok: 7_500_000,
        }),
    };

    /// Free: the host's own offline model.
    pub const FREE: ModelPrice = ModelPrice {
        input_per_mtok: 0,
        output_per_mtok: 0,
        cache_read_per_mtok: 0,
        cache_write_per_mtok: 0,
        long_context: None,
    };

    /// The prices (input, output, cache read, cache write per million) of
    /// a call whose prompt is `prompt_tokens`.
    fn rates_for(&self, prompt_tokens: u64) -> [u64; 4] {
        match self.long_context {
            Some(long) if prompt_tokens > long.above_prompt_tokens => [
                long.input_per_mtok,
                long.output_per_mtok,
                long.cache_read_per_mtok,
                long.cache_write_per_mtok,
            ],
            _ => [
                self.input_per_mtok,
                self.output_per_mtok,
                self.cache_read_per_mtok,
                self.cache_write_per_mtok,
            ],
        }
    }
}

/// Every price the meter knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceTable {
    /// Prices by model name. A name matches a record's model exactly or as
    /// its longest prefix (`claude-sonnet-4` prices
    /// `claude-sonnet-4-5-20250929`); the provider is not part of the name.
    pub models: BTreeMap<String, ModelPrice>,
    /// The price of a model no entry matches. Not free by default, so a
    /// new model is billed like Sonnet rather than not at all.
    pub default_model: ModelPrice,
    /// Micro-units per million units of wasmtime fuel a tool consumed.
    pub fuel_per_mfuel: u64,
}

impl Default for PriceTable {
    /// Anthropic list prices in micro-dollars (per million tokens: input,
    /// output, cache read, cache write):
    ///
    /// | model prefix | in | out | cache read | cache write |
    /// | --- | --- | --- | --- | --- |
    /// | `claude-sonnet-4` (and the default for unknown models) | 3.00 | 15.00 | 0.30 | 3.75 |
    /// | — a call whose prompt is over 200,000 tokens | 6.00 | 22.50 | 0.60 | 7.50 |
    /// | `claude-opus-4` (4, 4.1) | 15.00 | 75.00 | 1.50 | 18.75 |
    /// | `claude-opus-4-5` | 5.00 | 25.00 | 0.50 | 6.25 |
    /// | `claude-haiku-4-5` | 1.00 | 5.00 | 0.10 | 1.25 |
    /// | `karta-offline` | 0 | 0 | 0 | 0 |
    ///
    /// `karta-offline` is the host's own scripted model: it costs the
    /// operator nothing, so it bills nothing (its tokens and calls are
    /// still counted). Fuel costs 1 micro-unit per million: a call that
    /// burns the default limit of 10⁹ fuel (seconds of CPU) costs 0.001.
    fn default() -> Self {
        let price = |input: u64, output: u64, read: u64, write: u64| ModelPrice {
            input_per_mtok: input,
            output_per_mtok: output,
            cache_read_per_mtok: read,
            cache_write_per_mtok: write,
            long_context: None,
        };
        let models = BTreeMap::from([
            ("claude-sonnet-4".to_owned(), ModelPrice::SONNET_4),
            (
                "claude-opus-4".to_owned(),
                price(15_000_000, 75_000_000, 1_500_000, 18_750_000),
            ),
            (
                "claude-opus-4-5".to_owned(),
                price(5_000_000, 25_000_000, 500_000, 6_250_000),
            ),
            (
                "claude-haiku-4-5".to_owned(),
                price(1_000_000, 5_000_000, 100_000, 1_250_000),
            ),
            ("karta-offline".to_owned(), ModelPrice::FREE),
        ]);
        PriceTable {
            models,
            default_model: ModelPrice::SONNET_4,
            fuel_per_mfuel: 1,
        }
    }
}

impl PriceTable {
    /// Reads a price table from TOML (see the module doc). Unknown keys are
    /// refused — a misspelt price must not bill as the default — and the
    /// error names the line.
    pub fn from_toml(text: &str) -> Result<Self, MeterError> {
        toml::from_str(text).map_err(|error| MeterError::Prices {
            line: error.span().map(|span| line_of(text, span.start)),
            message: error.message().trim().to_owned(),
        })
    }

    /// The price of `model`: the entry named exactly so, else the entry
    /// with the longest name that `model` starts with, else the default.
    pub fn model_price(&self, model: &str) -> &ModelPrice {
        if let Some(price) = self.models.get(model) {
            return price;
        }
        self.models
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map_or(&self.default_model, |(_, price)| price)
    }

    /// What a usage costs, in micro-units, rounded up.
    pub fn cost_micros(&self, usage: &UsageKind) -> u64 {
        let exact = match usage {
            UsageKind::Model {
                model,
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
                prompt_tokens,
                ..
            } => {
                // The call's prompt, or at least this record's own input
                // (a record from before `prompt_tokens` was kept).
                let own_input = input_tokens
                    .saturating_add(*cache_read_tokens)
                    .saturating_add(*cache_write_tokens);
                let rates = self
                    .model_price(model)
                    .rates_for((*prompt_tokens).max(own_input));
                [
                    *input_tokens,
                    *output_tokens,
                    *cache_read_tokens,
                    *cache_write_tokens,
                ]
                .into_iter()
                .zip(rates)
                // A product of two u64s fits in u128; four of them may
                // not, and a sum that large is far past u64::MAX micros
                // anyway, so saturating loses nothing.
                .map(|(count, per_million)| u128::from(count) * u128::from(per_million))
                .fold(0u128, u128::saturating_add)
            }
            UsageKind::Tool { fuel, .. } => u128::from(*fuel) * u128::from(self.fuel_per_mfuel),
        };
        u64::try_from(exact.div_ceil(PER_MILLION)).unwrap_or(u64::MAX)
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(model: &str, input: u64, output: u64, read: u64, write: u64) -> UsageKind {
        UsageKind::Model {
            provider: "anthropic".into(),
            model: model.into(),
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
            prompt_tokens: 0,
        }
    }

    fn tool(fuel: u64) -> UsageKind {
        UsageKind::Tool {
            tool: "calc".into(),
            fuel,
            wall_us: 5,
        }
    }

    #[test]
    fn exact_integer_costs() {
        let prices = PriceTable::default();
        // 1000 in × 3 + 500 out × 15 + 2000 read × 0.3 + 100 write × 3.75
        // = 3000 + 7500 + 600 + 375 = 11,475 micro-dollars.
        assert_eq!(
            prices.cost_micros(&model("claude-sonnet-4-5-20250929", 1000, 500, 2000, 100)),
            11_475
        );
        // Haiku 4.5: 1,000,000 in × 1 + 1,000,000 out × 5 = $6.
        assert_eq!(
            prices.cost_micros(&model("claude-haiku-4-5", 1_000_000, 1_000_000, 0, 0)),
            6_000_000
        );
        assert_eq!(prices.cost_micros(&model("karta-offline", 9, 9, 9, 9)), 0);
        assert_eq!(prices.cost_micros(&tool(3_000_000)), 3);
        assert_eq!(prices.cost_micros(&tool(0)), 0);
    }

    #[test]
    fn costs_round_up_once_per_record() {
        let prices = PriceTable::default();
        // One Sonnet input token: 3 micro-dollars exactly.
        assert_eq!(prices.cost_micros(&model("claude-sonnet-4", 1, 0, 0, 0)), 3);
        // One cache-read token is 0.3: billed 1, never 0.
        assert_eq!(prices.cost_micros(&model("claude-sonnet-4", 0, 0, 1, 0)), 1);
        // Three cache-read tokens are 0.9 together: 1, not 3 × 1.
        assert_eq!(prices.cost_micros(&model("claude-sonnet-4", 0, 0, 3, 0)), 1);
        // 0.3 + 3.75 = 4.05 → 5.
        assert_eq!(prices.cost_micros(&model("claude-sonnet-4", 0, 0, 1, 1)), 5);
        // One unit of fuel at 1 per million: billed 1.
        assert_eq!(prices.cost_micros(&tool(1)), 1);
        assert_eq!(prices.cost_micros(&tool(1_000_001)), 2);
        // No overflow: the maximum saturates instead of wrapping.
        let max = model("claude-opus-4", u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(prices.cost_micros(&max), u64::MAX);
        let table = PriceTable {
            fuel_per_mfuel: u64::MAX,
            ..PriceTable::default()
        };
        assert_eq!(table.cost_micros(&tool(1_000_000)), u64::MAX);
        assert_eq!(table.cost_micros(&tool(u64::MAX)), u64::MAX);
    }

    #[test]
    fn models_match_exactly_or_by_longest_prefix() {
        let prices = PriceTable::default();
        let opus_4 = prices.models["claude-opus-4"];
        let opus_45 = prices.models["claude-opus-4-5"];
        assert_eq!(prices.model_price("claude-opus-4-1-20250805"), &opus_4);
        assert_eq!(prices.model_price("claude-opus-4-5-20251101"), &opus_45);
        assert_eq!(prices.model_price("claude-opus-4-5"), &opus_45);
        assert_eq!(
            prices.model_price("claude-sonnet-4-5-20250929"),
            &ModelPrice::SONNET_4
        );
        // No entry: the default, which is not free.
        assert_eq!(prices.model_price("gpt-5"), &prices.default_model);
        assert_ne!(prices.default_model, ModelPrice::FREE);
        // A prefix must be a prefix: "claude" matches nothing here.
        assert_eq!(prices.model_price("claude"), &prices.default_model);
    }

    #[test]
    fn toml_tables_load_and_errors_name_the_line() {
        let table = PriceTable::from_toml(
            "fuel_per_mfuel = 7\n\
             [models.\"m-1\"]\n\
             input_per_mtok = 1\n\
             output_per_mtok = 2\n\
             cache_read_per_mtok = 3\n\
             cache_write_per_mtok = 4\n",
        )
        .expect("valid table");
        assert_eq!(table.fuel_per_mfuel, 7);
        assert_eq!(table.models.len(), 1, "[models] replaces the built-in ones");
        assert_eq!(table.model_price("m-1-x").cache_write_per_mtok, 4);
        assert_eq!(
            table.default_model,
            ModelPrice::SONNET_4,
            "absent: built in"
        );
        assert_eq!(
            PriceTable::from_toml("").expect("empty"),
            PriceTable::default()
        );

        let cases = [
            // A misspelt key on line 3.
            (
                "fuel_per_mfuel = 1\n[default_model]\ninput_per_mtk = 1\n",
                3,
            ),
            // A price left out of a model (line 2 opens it).
            (
                "\n[models.m]\ninput_per_mtok = 1\noutput_per_mtok = 1\ncache_read_per_mtok = 1\n",
                2,
            ),
            // Not a number, line 4.
            ("\n\n\nfuel_per_mfuel = \"cheap\"\n", 4),
            // A negative price, line 2.
            ("\nfuel_per_mfuel = -1\n", 2),
            // Not TOML at all, line 2.
            ("fuel_per_mfuel = 1\n[[[\n", 2),
        ];
        for (text, line) in cases {
            let error = PriceTable::from_toml(text).expect_err(text);
            match &error {
                MeterError::Prices { line: got, .. } => assert_eq!(*got, Some(line), "{error}"),
                other => panic!("{other}"),
            }
            assert!(
                error.to_string().contains(&format!("line {line}")),
                "{error}"
            );
            assert_eq!(error.status(), 400);
        }
    }

    /// A call whose prompt is over its model's long-context threshold is
    /// priced at the long-context rates, its output record too (which
    /// carries the call's prompt, not input of its own); at the threshold
    /// and below, and for a model without such prices, the base rates. A
    /// record from before the prompt was kept is judged by its own input.
    #[test]
    fn a_long_prompt_prices_the_whole_call_at_the_long_context_rates() {
        let prices = PriceTable::default();
        let call = |model: &str, kind: [u64; 4], prompt: u64| UsageKind::Model {
            provider: "anthropic".into(),
            model: model.into(),
            input_tokens: kind[0],
            output_tokens: kind[1],
            cache_read_tokens: kind[2],
            cache_write_tokens: kind[3],
            prompt_tokens: prompt,
        };
        let sonnet = "claude-sonnet-4-5-20250929";
        // The input record of a 250,000-token prompt: 50,000 new tokens,
        // 150,000 read from the cache, 50,000 written to it. At $6, $0.60
        // and $7.50 a million: 300,000 + 90,000 + 375,000 micro-dollars.
        let input = call(sonnet, [50_000, 0, 150_000, 50_000], 250_000);
        assert_eq!(prices.cost_micros(&input), 765_000);
        // Its output record: 1,000 tokens at $22.50, not $15.
        assert_eq!(
            prices.cost_micros(&call(sonnet, [0, 1_000, 0, 0], 250_000)),
            22_500
        );
        // At the threshold exactly: base prices ($3 in, $15 out).
        assert_eq!(
            prices.cost_micros(&call(sonnet, [200_000, 1_000, 0, 0], 200_000)),
            600_000 + 15_000
        );
        // An old record without the prompt: its own input, over the line.
        assert_eq!(
            prices.cost_micros(&call(sonnet, [200_001, 0, 0, 0], 0)),
            1_200_006
        );
        // A model without long-context prices: one price, whatever the
        // prompt (Haiku 4.5: $5 a million out).
        assert_eq!(
            prices.cost_micros(&call("claude-haiku-4-5", [0, 1_000, 0, 0], 900_000)),
            5_000
        );
        // Unknown models are billed like Sonnet, long prompts included.
        assert_eq!(
            prices.cost_micros(&call("some-new-model", [0, 1_000, 0, 0], 250_000)),
            22_500
        );
    }

    /// A `long_context` table loads under a model; like the base prices,
    /// every one of its keys is required and a misspelt one is refused.
    #[test]
    fn long_context_tables_load_and_refuse_what_they_do_not_know() {
        let base = "[models.m]\ninput_per_mtok = 1\noutput_per_mtok = 1\n\
                    cache_read_per_mtok = 1\ncache_write_per_mtok = 1\n";
        let table = PriceTable::from_toml(&format!(
            "{base}[models.m.long_context]\nabove_prompt_tokens = 10\ninput_per_mtok = 2\n\
             output_per_mtok = 3\ncache_read_per_mtok = 4\ncache_write_per_mtok = 5\n"
        ))
        .expect("a long_context table");
        assert_eq!(
            table.models["m"].long_context,
            Some(LongContextPrice {
                above_prompt_tokens: 10,
                input_per_mtok: 2,
                output_per_mtok: 3,
                cache_read_per_mtok: 4,
                cache_write_per_mtok: 5,
            })
        );
        // Without one, the model has one price.
        assert_eq!(
            PriceTable::from_toml(base).expect("base").models["m"].long_context,
            None
        );
        for broken in [
            // The threshold left out: it would price every call long.
            "input_per_mtok = 2\noutput_per_mtok = 3\ncache_read_per_mtok = 4\ncache_write_per_mtok = 5\n",
            // A price left out: it would bill as free.
            "above_prompt_tokens = 10\ninput_per_mtok = 2\noutput_per_mtok = 3\ncache_read_per_mtok = 4\n",
            // A misspelt key.
            "above_prompt_tokens = 10\ninput_per_mtok = 2\noutput_per_mtok = 3\ncache_read_per_mtok = 4\n\
             cache_write_per_mtok = 5\nabove_tokens = 1\n",
        ] {
            let text = format!("{base}[models.m.long_context]\n{broken}");
            let error = PriceTable::from_toml(&text).expect_err(&text);
            assert_eq!(error.status(), 400, "{error}");
        }
    }
}

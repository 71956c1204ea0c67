//! `hivemesh tally FILE.soc|.soi|.toc|.toi` (or a Debian tally sheet): a
//! PrefLib file's unsigned ballots through the same engine as signed ones.
//!
//! How each rule reads a PrefLib order (groups best first, ties inside a
//! group, unlisted alternatives tied last):
//! - `schulze`, `borda`: the weak order as it stands (Borda: one point per
//!   alternative ranked strictly below, unlisted ones included).
//! - `plurality`: the first group, which must be one alternative; an order
//!   that ties several first is an error naming its line, and a ballot that
//!   ranks nothing (possible only in a Debian tally sheet) votes for no one.
//! - `approval`: every alternative the order lists is approved (so in a
//!   complete file, soc or toc, every ballot approves everyone).
//! - `weighted`: refused; PrefLib ballots carry no weights.

use std::path::Path;

use anyhow::{Context, bail};
use hivemesh::gpu::TallyInput;
use hivemesh::gpu::engine::{BackendChoice, TallyEngine};
use hivemesh::preflib::{DataType, Layout, PrefLibFile, debian, looks_like_preflib, parse};
use hivemesh::protocol::TallyRule;

use super::{parse_rule, print_outcome};
use crate::output::outln;

/// The file as unsigned ballots, if it is one: PrefLib (by its extension,
/// a `#` header or the legacy layout's first line) or a Debian tally sheet
/// (its `V:` lines); `None` for anything else (a signed ballot file).
pub fn read(path: &Path, bytes: &[u8]) -> anyhow::Result<Option<PrefLibFile>> {
    let extension_type = path.extension().and_then(|e| e.to_str()).and_then(DataType::from_name);
    if extension_type.is_some() || looks_like_preflib(bytes) {
        let file = parse(bytes, extension_type)
            .with_context(|| format!("{} is not a PrefLib file", path.display()))?;
        return Ok(Some(file));
    }
    if debian::looks_like_tally_sheet(bytes) {
        let file = debian::parse_tally_sheet(bytes)
            .with_context(|| format!("{} is not a Debian tally sheet", path.display()))?;
        return Ok(Some(file));
    }
    Ok(None)
}

/// Tallies and reports unsigned ballots. The default rule is Schulze.
pub fn tally(
    file: &PrefLibFile,
    rule: Option<&str>,
    backend: BackendChoice,
    json: bool,
) -> anyhow::Result<()> {
    let rule = parse_rule(rule.unwrap_or("schulze"))?;
    let input = input(file, rule)?;
    let engine = TallyEngine::new(backend).context("opening the tally backend")?;
    let (result, used) = engine.tally(&input);
    let result = result.context("tallying")?;
    let source = format!(
        "{} (unsigned ballots; no signature, eligibility or quorum checks)",
        file.layout.describe(file.data_type)
    );
    let debian = file.layout == Layout::DebianTallySheet;
    let number = |c: u32| format!("{} {}", if debian { "option" } else { "alternative" }, c + 1);
    if json {
        let label = |c: u32| file.names.get(c as usize).cloned().unwrap_or_else(|| number(c));
        let report = serde_json::json!({
            "status": "final",
            "source": source,
            "signed": false,
            "format": match file.layout {
                Layout::PrefLib => "preflib",
                Layout::PrefLibLegacy => "preflib-legacy",
                Layout::DebianTallySheet => "debian-tally-sheet",
            },
            "data_type": file.data_type.name(),
            "title": file.title,
            "rule": rule.name(),
            "backend": used,
            "voters": file.voters(),
            "order_lines": file.orders.len(),
            "candidates": file.names,
            "winner": result.winner.map(|w| serde_json::json!({"index": w, "label": label(w)})),
            "tied_for_first": result.tied_for_first,
            "ranking": result.ranking,
            "counts": result.counts,
        });
        outln!("{report:#}");
        return Ok(());
    }
    outln!("source: {source}");
    if let Some(title) = &file.title {
        outln!("title: {title}");
    }
    if debian {
        outln!("voters: {}", file.voters());
    } else {
        outln!("voters: {} ({} order lines)", file.voters(), file.orders.len());
    }
    outln!("rule: {}   backend: {used}", rule.name());
    print_outcome(&result, &file.names, number)
}

/// The tally input for `rule`: one entry per order line, its `count` as the
/// entry's multiplicity (never repeated in memory: a 100-byte file may stand
/// for 2^24 voters).
fn input(file: &PrefLibFile, rule: TallyRule) -> anyhow::Result<TallyInput> {
    let candidates = file.names.len() as u32;
    let mut counts = Vec::with_capacity(file.orders.len());
    let mut input = match rule {
        TallyRule::Schulze | TallyRule::Borda => {
            let orders: Vec<Vec<Vec<u32>>> = file.orders.iter().map(|o| o.groups.clone()).collect();
            counts.extend(file.orders.iter().map(|o| o.count));
            TallyInput::weak_orders(rule, candidates, &orders)
        }
        TallyRule::Approval => {
            let lists: Vec<Vec<u32>> = file.orders.iter().map(|o| o.groups.concat()).collect();
            counts.extend(file.orders.iter().map(|o| o.count));
            TallyInput::lists(rule, candidates, &lists)
        }
        TallyRule::Plurality => {
            let mut choices = Vec::with_capacity(file.orders.len());
            for order in &file.orders {
                match order.groups.first().map(Vec::as_slice) {
                    Some(&[first]) => {
                        choices.push(first);
                        counts.push(order.count);
                    }
                    Some(tied) => {
                        let tied: Vec<String> = tied.iter().map(|c| (c + 1).to_string()).collect();
                        bail!(
                            "line {}: plurality counts each ballot's single first choice, but this order \
                             ties {{{}}} first (use schulze or borda)",
                            order.line,
                            tied.join(",")
                        )
                    }
                    None => {} // ranks nothing (a Debian "----" ballot): votes for no one
                }
            }
            TallyInput::plurality(candidates, choices)
        }
        TallyRule::WeightedPlurality => {
            bail!("PrefLib ballots carry no weights: use plurality (each voter counts once)")
        }
    };
    input.weights = counts
        .into_iter()
        .map(|count| u32::try_from(count).context("an order's count exceeds 2^32 voters"))
        .collect::<anyhow::Result<_>>()?;
    Ok(input)
}

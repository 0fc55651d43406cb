//! `erp replay` and `erp verify`: argument definitions and glue over the `replay` crate.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use ledger::jetstream::JetStreamLog;
use projections::allocation::Allocation;
use projections::ats::Ats;
use projections::audit::Audit;
use projections::finance::Finance;
use projections::margin::Margin;
use projections::replenish::Replenishment;
use replay::output::{self, Filter, Format};
use replay::point::{self, Knowledge, Point, Resolved};
use replay::verify::{Digest, VerifyOptions};
use replay::{Model, Progress, WriteModel};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReplayView {
    /// Available to sell per SKU × location and SKU × channel.
    Ats,
    /// Order lines: allocation, backorders, progress.
    Allocation,
    /// Events per entity (SKU, location, order, actor, …).
    Audit,
    /// Contribution margin by SKU, channel, order and day; inventory value by entity × SKU ×
    /// location.
    Margin,
    /// Journal totals per entity × currency × account, and the balance check.
    Finance,
    /// Purchase recommendations per SKU × location.
    Replenishment,
    /// Exceptions raised by the rules, their status, owner and resolution.
    Exceptions,
    /// Operations KPIs by day, week and month.
    Kpis,
    /// Lots: where each came from and which orders it went to.
    Trace,
    /// The processor's write model: stock balances and orders.
    State,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

/// A point of both timelines: what was known (a sequence or a time recorded) and what had
/// happened by then in business time; the log's end without any.
#[derive(Debug, clap::Args)]
pub struct PointArgs {
    /// Knowledge: everything the log held up to this stream sequence.
    #[arg(long, conflicts_with = "as_recorded")]
    as_of_seq: Option<u64>,
    /// Knowledge: everything the server had stored by this time (RFC 3339, or a date meaning
    /// its end, UTC). Resolved to a sequence with the stream's own time index.
    #[arg(long)]
    as_recorded: Option<String>,
    /// Business time: only events effective at or before this time (RFC 3339 or a date),
    /// including back-dated and late ones known by the knowledge point.
    #[arg(long)]
    as_effective: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// What to build.
    view: ReplayView,
    #[command(flatten)]
    point: PointArgs,
    /// Compare with a second point: the `--to-*` options; what they leave out is taken from
    /// the first point.
    #[arg(long)]
    diff: bool,
    #[arg(long, requires = "diff", conflicts_with = "to_recorded")]
    to_seq: Option<u64>,
    #[arg(long, requires = "diff")]
    to_recorded: Option<String>,
    #[arg(long, requires = "diff")]
    to_effective: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: OutputFormat,
    /// Only rows whose key starts with this (e.g. `loc.85123A.` for one SKU in ATS).
    #[arg(long)]
    key_prefix: Option<String>,
    /// Only rows whose field has this value, e.g. `--where location=WH1`; repeatable.
    #[arg(long = "where", value_name = "FIELD=VALUE")]
    conditions: Vec<String>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Verify up to this sequence only (default: the log's end).
    #[arg(long)]
    until: Option<u64>,
    /// Print the running digest every this many sequences (checkpoints to record).
    #[arg(long)]
    digest_every: Option<u64>,
    /// A digest recorded earlier, `SEQ:HEX`: the log up to SEQ must still hash to it.
    /// Repeatable.
    #[arg(long, value_name = "SEQ:DIGEST")]
    expect: Vec<String>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

fn time(flag: &str, text: &Option<String>) -> anyhow::Result<Option<ledger::values::Timestamp>> {
    text.as_deref()
        .map(point::parse_time)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

/// Progress on stderr: a progress bar on a terminal, a plain line every few seconds otherwise
/// (logs and pipes get no control characters).
pub(crate) fn progress_printer(what: &'static str, quiet: bool) -> impl FnMut(Progress) {
    let tty = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let mut bar: Option<indicatif::ProgressBar> = None;
    move |p: Progress| {
        if quiet {
            return;
        }
        if tty {
            let bar = bar.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new(p.total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix}: [{bar:40}] {pos}/{len} ({percent}%), {msg}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(what);
                bar
            });
            bar.set_length(p.total);
            bar.set_position(p.done);
            // The rate and time left as measured by the work itself: updates can come seconds
            // apart, which the bar's own estimate does not know.
            bar.set_message(format!(
                "{:.0}/s, {:.0} s left",
                p.events_per_second, p.eta_seconds
            ));
            if p.done >= p.total {
                bar.finish();
            }
            return;
        }
        if p.done >= p.total || last_line.elapsed().as_secs() >= 5 {
            last_line = std::time::Instant::now();
            let percent = if p.total == 0 {
                100.0
            } else {
                p.done as f64 * 100.0 / p.total as f64
            };
            eprintln!(
                "{what}: {}/{} ({percent:.0}%), {:.0}/s, {:.0} s left",
                p.done, p.total, p.events_per_second, p.eta_seconds
            );
        }
    }
}

/// The point `--as-of-seq`, `--as-recorded` and `--as-effective` name (the log's end without
/// them).
fn first_point(args: &PointArgs) -> anyhow::Result<Point> {
    let knowledge = match (args.as_of_seq, &args.as_recorded) {
        (Some(seq), _) => Knowledge::Seq(seq),
        (None, Some(_)) => {
            Knowledge::Recorded(time("as-recorded", &args.as_recorded)?.expect("given"))
        }
        (None, None) => Knowledge::Latest,
    };
    Ok(Point {
        knowledge,
        effective: time("as-effective", &args.as_effective)?,
    })
}

pub async fn replay(log: &JetStreamLog, args: &ReplayArgs) -> anyhow::Result<()> {
    let first = first_point(&args.point)?;
    let knowledge = first.knowledge;
    let mut points = vec![point::resolve(log, first).await?];
    if args.diff {
        let knowledge = match (args.to_seq, &args.to_recorded) {
            (Some(seq), _) => Knowledge::Seq(seq),
            (None, Some(_)) => {
                Knowledge::Recorded(time("to-recorded", &args.to_recorded)?.expect("given"))
            }
            (None, None) => knowledge,
        };
        let effective = time("to-effective", &args.to_effective)?.or(first.effective);
        let second = Point {
            knowledge,
            effective,
        };
        if second == first {
            bail!(
                "--diff needs a second point that differs: give --to-seq, --to-recorded or --to-effective"
            );
        }
        points.push(point::resolve(log, second).await?);
    }
    let format = match args.format {
        OutputFormat::Table => Format::Table,
        OutputFormat::Json => Format::Json,
        OutputFormat::Csv => Format::Csv,
    };
    let filter =
        Filter::new(args.key_prefix.clone(), &args.conditions).map_err(anyhow::Error::msg)?;
    let text = match args.view {
        ReplayView::Ats => build::<Ats>(log, &points, format, &filter, args.quiet).await?,
        ReplayView::Allocation => {
            build::<Allocation>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::Audit => build::<Audit>(log, &points, format, &filter, args.quiet).await?,
        ReplayView::Margin => build::<Margin>(log, &points, format, &filter, args.quiet).await?,
        ReplayView::Finance => build::<Finance>(log, &points, format, &filter, args.quiet).await?,
        ReplayView::Replenishment => {
            build::<Replenishment>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::Exceptions => {
            build::<projections::exceptions::Exceptions>(log, &points, format, &filter, args.quiet)
                .await?
        }
        ReplayView::Kpis => {
            build::<projections::kpis::Kpis>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::Trace => {
            build::<projections::trace::Trace>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::State => build::<WriteModel>(log, &points, format, &filter, args.quiet).await?,
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // The reader stopped early (`| head`): not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

async fn build<M: Model>(
    log: &JetStreamLog,
    points: &[Resolved],
    format: Format,
    filter: &Filter,
    quiet: bool,
) -> anyhow::Result<String> {
    let replayed = replay::replay::<_, M>(log, points, progress_printer("replay", quiet))
        .await
        .context("replay stopped")?;
    if !quiet {
        eprintln!(
            "replayed {} records in {:.1} s ({:.0} records/s)",
            replayed.records,
            replayed.elapsed.as_secs_f64(),
            replayed.records as f64 / replayed.elapsed.as_secs_f64().max(1e-9)
        );
    }
    Ok(match &replayed.built[..] {
        [one] => output::render_rows(format, &one.point.to_string(), &output::rows(one, filter)),
        [a, b] => output::render_diff(
            format,
            &a.point.to_string(),
            &b.point.to_string(),
            &output::diffs(replayed.diff(), filter),
        ),
        _ => unreachable!("one or two points"),
    })
}

pub async fn verify(log: &JetStreamLog, args: &VerifyArgs) -> anyhow::Result<()> {
    let expect = args
        .expect
        .iter()
        .map(|e| {
            let (seq, digest) = e
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--expect `{e}`: expected SEQ:DIGEST"))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| anyhow::anyhow!("--expect `{e}`: `{seq}` is not a sequence number"))?;
            let digest = Digest::parse(digest).map_err(|m| anyhow::anyhow!("--expect: {m}"))?;
            Ok((seq, digest))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = VerifyOptions {
        until: args.until,
        digest_every: args.digest_every,
        expect,
    };
    match replay::verify::verify(log, &options, progress_printer("verify", args.quiet)).await {
        Ok(report) => {
            for (seq, digest) in &report.checkpoints {
                say!("digest at {seq}: {digest}");
            }
            if report.last_seq == 0 {
                say!("the ledger is empty: nothing to verify");
                return Ok(());
            }
            say!(
                "verified sequences 1..={} ({} events, {} batch markers) in {:.1} s: sequences contiguous, hash chains intact, batches whole, invariants hold",
                report.last_seq,
                report.events,
                report.markers,
                report.elapsed.as_secs_f64()
            );
            say!("digest at {}: {}", report.last_seq, report.digest);
            if !report.foreign.is_empty() {
                for f in &report.foreign {
                    say!(
                        "foreign message at sequence {} on `{}`: {}; never applied",
                        f.seq,
                        if f.stored_subject.is_empty() {
                            "a writer marker subject"
                        } else {
                            &f.stored_subject
                        },
                        f.reason
                    );
                }
                bail!(
                    "{} messages in the ledger were not written by its writer (first at sequence {}); everything else verified",
                    report.foreign.len(),
                    report.foreign[0].seq
                );
            }
            Ok(())
        }
        Err(failure) => bail!("{failure}"),
    }
}

#[derive(Debug, clap::Args)]
pub struct JournalArgs {
    /// Stop at this stream sequence (inclusive).
    #[arg(long)]
    until: Option<u64>,
}

/// CSV text for one field: quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// `erp journal`: reads the ledger in order, posts every event through the books, and writes
/// each journal line as CSV. Ends with a check that debits equal credits in each legal entity
/// and currency.
pub async fn journal(log: &JetStreamLog, args: &JournalArgs) -> anyhow::Result<()> {
    use ledger::walk::{WalkUntil, Walked, walk};
    let until = match args.until {
        Some(seq) => WalkUntil::Sequence(seq),
        None => WalkUntil::CaughtUp,
    };
    let mut walker = walk(log, 1, until, Some(ledger::chain::ChainVerifier::new())).await?;
    let mut books = projections::books::Books::default();
    let mut translator = projections::translate::Translator::default();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let header = "seq,recorded_at,effective_at,event_type,entity,currency,account,debit,credit,sku,location,order,channel,period,tax_jurisdiction,tax_rate,functional_currency,functional_debit,functional_credit,counterparty\n";
    let mut write = |text: &str| -> anyhow::Result<bool> {
        match out.write_all(text.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    write(header)?;
    let mut totals = Totals::new();
    let mut lines = 0u64;
    let mut foreign = 0u64;
    while let Some(item) = walker.next().await {
        let events = match item? {
            Walked::Batch(batch) => batch.events,
            Walked::Foreign(f) => {
                foreign += 1;
                eprintln!(
                    "sequence {} on `{}` is not the ledger's ({}): no journal lines",
                    f.seq, f.stored_subject, f.reason
                );
                continue;
            }
        };
        for event in events {
            if args.until.is_some_and(|until| event.seq > until) {
                break;
            }
            let mut journal = Journal {
                books: &mut books,
                translator: &mut translator,
                totals: &mut totals,
                lines: &mut lines,
            };
            if !journal.post(&event, &mut write)? {
                return Ok(());
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    eprintln!("{lines} journal lines");
    let mut differ = Vec::new();
    for ((entity, currency, functional), (debits, credits)) in &totals {
        let books = if *functional {
            format!("{entity} {currency} (functional)")
        } else {
            format!("{entity} {currency}")
        };
        eprintln!("{books}: debits {debits}, credits {credits}");
        if debits != credits {
            differ.push(format!("{books}: debits {debits} and credits {credits}"));
        }
    }
    if foreign > 0 {
        eprintln!("{foreign} foreign messages were passed over (see `erp verify`)");
    }
    if !differ.is_empty() {
        bail!("the books do not balance: {}", differ.join("; "));
    }
    Ok(())
}

/// Debits and credits per legal entity and currency, in transaction currency (`false`) and
/// translated into the entity's functional currency (`true`): amounts of different currencies
/// are never added together.
type Totals = std::collections::BTreeMap<
    (String, String, bool),
    (rust_decimal::Decimal, rust_decimal::Decimal),
>;

/// What `erp journal` carries from event to event.
struct Journal<'a> {
    books: &'a mut projections::books::Books,
    translator: &'a mut projections::translate::Translator,
    totals: &'a mut Totals,
    lines: &'a mut u64,
}

impl Journal<'_> {
    /// Posts one event and writes its journal lines, each with its amount in the entity's
    /// functional currency (left empty while the entity is not defined or has no rate for
    /// the line's currency at the event's date), and the realised exchange difference and
    /// rounding lines the translation adds (with no transaction amount). `false` when the
    /// reader has gone.
    fn post(
        &mut self,
        event: &ledger::RecordedEvent,
        write: &mut impl FnMut(&str) -> anyhow::Result<bool>,
    ) -> anyhow::Result<bool> {
        use projections::translate::Translation;
        use rust_decimal::Decimal;
        self.translator.observe(event);
        let posted = self.books.post(event);
        if !projections::books::balanced(&posted.lines) {
            bail!("event {} does not balance: {:?}", event.seq, posted.lines);
        }
        let mut functional: Vec<Option<(String, Decimal)>> = vec![None; posted.lines.len()];
        let mut added = Vec::new();
        for translation in self.translator.translate(event, &posted.lines) {
            let Translation::Done {
                entity,
                currency,
                lines,
            } = translation
            else {
                continue;
            };
            for line in lines {
                let total = self
                    .totals
                    .entry((entity.clone(), currency.clone(), true))
                    .or_default();
                total.0 += line.amount.max(Decimal::ZERO);
                total.1 += (-line.amount).max(Decimal::ZERO);
                match line.line {
                    Some(i) => functional[i] = Some((currency.clone(), line.amount)),
                    None => added.push((entity.clone(), currency.clone(), line)),
                }
            }
        }
        let period = ledger::values::Period::of(event.envelope.effective_at).to_string();
        let head = [
            event.seq.to_string(),
            event.recorded_at.to_string(),
            event.envelope.effective_at.to_string(),
            event.envelope.event.event_type().name().to_owned(),
        ];
        let split = |amount: Decimal| {
            (
                amount.max(Decimal::ZERO).to_string(),
                (-amount).max(Decimal::ZERO).to_string(),
            )
        };
        let mut rows = Vec::with_capacity(posted.lines.len() + added.len());
        for (l, functional) in posted.lines.iter().zip(functional) {
            let total = self
                .totals
                .entry((l.entity.clone(), l.currency.clone(), false))
                .or_default();
            total.0 += l.debit();
            total.1 += l.credit();
            let (fn_currency, (fn_debit, fn_credit)) = match functional {
                Some((currency, amount)) => (currency, split(amount)),
                None => Default::default(),
            };
            rows.push([
                l.entity.clone(),
                l.currency.clone(),
                l.account.name().to_owned(),
                l.debit().to_string(),
                l.credit().to_string(),
                l.sku.clone().unwrap_or_default(),
                l.location.clone().unwrap_or_default(),
                l.order.clone().unwrap_or_default(),
                l.channel.clone().unwrap_or_default(),
                period.clone(),
                l.tax
                    .as_ref()
                    .map(|t| t.jurisdiction.clone())
                    .unwrap_or_default(),
                l.tax.as_ref().map(|t| t.rate.clone()).unwrap_or_default(),
                fn_currency,
                fn_debit,
                fn_credit,
                l.counterparty.clone().unwrap_or_default(),
            ]);
        }
        for (entity, currency, line) in added {
            let (fn_debit, fn_credit) = split(line.amount);
            rows.push([
                entity,
                currency.clone(),
                line.account.to_owned(),
                "0".into(),
                "0".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                period.clone(),
                String::new(),
                String::new(),
                currency,
                fn_debit,
                fn_credit,
                String::new(),
            ]);
        }
        for row in rows {
            *self.lines += 1;
            let row = head
                .iter()
                .chain(row.iter())
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(",");
            if !write(&(row + "\n"))? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[derive(Debug, clap::Args)]
pub struct ReplenishArgs {
    /// Only this SKU.
    #[arg(long)]
    sku: Option<String>,
    /// Also list SKUs that need nothing today.
    #[arg(long)]
    all: bool,
    #[arg(long, value_enum, default_value = "table")]
    format: OutputFormat,
    /// Create one purchase order per location for today's due recommendations, from this
    /// supplier, at each SKU's last received unit cost.
    #[arg(long, value_name = "SUPPLIER")]
    accept: Option<String>,
    /// The actor the purchase orders are created as (role `buyer`), on a server without
    /// credentials; with --auth they are created as the sending user (--user, default `buyer`).
    #[arg(long, default_value = "replenishment")]
    actor: String,
    #[arg(long, default_value = "UK01")]
    legal_entity: String,
    /// Expected delivery, `YYYY-MM-DD` (default: the recommendation's date plus its lead time).
    #[arg(long)]
    expected_on: Option<String>,
    #[arg(long)]
    quiet: bool,
}

/// `erp replenish`: replays the replenishment view to the log's end and lists what to buy;
/// with --accept, sends the purchase orders.
pub async fn replenish(
    log: &JetStreamLog,
    sender: &crate::Sender,
    args: &ReplenishArgs,
) -> anyhow::Result<()> {
    let last = ledger::EventLog::last_sequence(log).await?;
    let mut replayed = replay::replay::<_, Replenishment>(
        log,
        &[Resolved::at_seq(last)],
        progress_printer("replenish", args.quiet),
    )
    .await
    .context("replay stopped")?;
    let built = replayed.built.remove(0);
    let conditions: Vec<String> = if args.all {
        Vec::new()
    } else {
        vec!["due=true".into()]
    };
    let prefix = args
        .sku
        .as_deref()
        .map(|s| format!("rec.{}.", ledger::subject::escape_token(s)))
        .or(Some("rec.".into()));
    let filter = Filter::new(prefix, &conditions).map_err(anyhow::Error::msg)?;
    let format = match args.format {
        OutputFormat::Table => Format::Table,
        OutputFormat::Json => Format::Json,
        OutputFormat::Csv => Format::Csv,
    };
    let rows = output::rows(&built, &filter);
    say_part!(
        "{}",
        output::render_rows(format, &built.point.to_string(), &rows)
    );
    let Some(supplier) = &args.accept else {
        return Ok(());
    };
    let view = &built.model;
    let mut by_location: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        Default::default();
    let mut when = None;
    for (sku, location) in view.cells() {
        if args.sku.as_ref().is_some_and(|s| *s != sku) {
            continue;
        }
        let Some((r, params)) = view.recommendation(&sku, &location) else {
            continue;
        };
        if !r.due || r.qty == 0 {
            continue;
        }
        let Some(cost) = view.last_cost(&sku) else {
            eprintln!("{sku} at {location}: never received, no cost known; skipped");
            continue;
        };
        when = Some((r.order_by, params.lead_time_days));
        let lines = by_location.entry(location.clone()).or_default();
        lines.push(serde_json::json!({
            "line": lines.len() + 1, "sku": sku, "location": location, "qty": r.qty,
            "unit_cost": cost,
        }));
    }
    let Some((today, lead)) = when else {
        eprintln!("nothing is due: no purchase order created");
        return Ok(());
    };
    let expected = match &args.expected_on {
        Some(d) => d.clone(),
        None => (today + chrono::Duration::days(i64::from(lead))).to_string(),
    };
    let client = sender.client().await?;
    for (location, lines) in by_location {
        let currency = lines[0]["unit_cost"]["currency"].clone();
        let po = format!("REP-{today}-{location}");
        let mut command = serde_json::json!({
            "command_id": uuid::Uuid::now_v7(),
            "legal_entity": args.legal_entity,
            "effective_at": format!("{today}T12:00:00Z"),
            "type": "purchase.create_order",
            "data": {"purchase_order": po, "supplier": supplier, "currency": currency,
                     "lines": lines, "expected_on": expected},
        });
        if !sender.authenticated() {
            // With credentials the actor is the sender's own.
            command["actor"] = serde_json::json!({"id": args.actor, "role": "buyer"});
        }
        let outcome = client
            .submit_json(bytes::Bytes::from(command.to_string()))
            .await?;
        eprintln!("{po}: {}", serde_json::to_string(&outcome)?);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// Only the first N trading days of the data set.
    #[arg(long)]
    days: Option<usize>,
    #[arg(long, default_value_t = 14)]
    lead_time_days: u32,
    #[arg(long, default_value_t = 7)]
    review_period_days: u32,
    #[arg(long, default_value_t = 0.95)]
    service_level: f64,
    /// Days of demand before the first order decision (both policies).
    #[arg(long, default_value_t = 28)]
    warm_up: usize,
}

/// `erp backtest-replenishment`: per SKU, the UCI daily demand (units ordered per day, from
/// the demo workload's order lines, from the SKU's first order on) through the policy and
/// through naive min/max, stock starting at two weeks of the warm-up's average demand; lost
/// sales when out of stock.
pub fn backtest(args: &BacktestArgs) -> anyhow::Result<()> {
    use projections::replenish::{MinMax, Params, Recommended, simulate};
    let dataset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(commands::demo::DATASET);
    let (all, _) = commands::demo::uci_commands(&dataset, args.days)?;
    let mut first = None;
    let mut daily: std::collections::BTreeMap<String, std::collections::BTreeMap<i64, i64>> =
        Default::default();
    for c in &all {
        let commands::CommandBody::PlaceOrder(o) = &c.body else {
            continue;
        };
        let day = c.effective_at.as_datetime().date_naive();
        let start = *first.get_or_insert(day);
        let index = (day - start).num_days();
        for line in &o.lines {
            *daily
                .entry(line.sku.to_string())
                .or_default()
                .entry(index)
                .or_default() += line.qty.get();
        }
    }
    let days = daily
        .values()
        .filter_map(|d| d.keys().last())
        .max()
        .map_or(0, |d| d + 1) as usize;
    let params = Params {
        lead_time_days: args.lead_time_days,
        review_period_days: args.review_period_days,
        service_level: args.service_level,
        ..Params::default()
    };
    let (mut policy_total, mut naive_total) = (
        projections::replenish::Outcome::default(),
        projections::replenish::Outcome::default(),
    );
    let mut skus = 0;
    for series in daily.values() {
        // Each SKU's history starts at its first order: a SKU launched in June is not judged
        // on the months before it existed.
        let start = series.keys().next().copied().unwrap_or(0);
        let demand: Vec<i64> = (start..days as i64)
            .map(|d| series.get(&d).copied().unwrap_or(0))
            .collect();
        let days = demand.len();
        let warm = args.warm_up.min(days);
        let mean = demand[..warm].iter().sum::<i64>() as f64 / warm.max(1) as f64;
        let initial = (mean * 14.0).ceil() as i64;
        let lead = args.lead_time_days as usize;
        let review = args.review_period_days as usize;
        let p = simulate(
            &demand,
            initial,
            lead,
            review,
            warm,
            &mut Recommended(params.clone()),
        );
        let n = simulate(
            &demand,
            initial,
            lead,
            review,
            warm,
            &mut MinMax::new(warm, 14.0, 42.0),
        );
        for (total, o) in [(&mut policy_total, p), (&mut naive_total, n)] {
            total.demanded += o.demanded;
            total.served += o.served;
            total.average_inventory += o.average_inventory;
            total.orders += o.orders;
        }
        skus += 1;
    }
    say!(
        "UCI demand, {skus} SKUs, {days} days; lead time {} days, review every {} days, warm-up {} days; lost sales when out of stock",
        args.lead_time_days,
        args.review_period_days,
        args.warm_up
    );
    say!();
    say!("| policy | fill rate | average units on hand (all SKUs) | purchase orders |");
    say!("|---|---|---|---|");
    say!(
        "| recommendations (service level {}, safety stock from demand variability, {} days of history) | {:.1}% | {:.0} | {} |",
        args.service_level,
        projections::replenish::HISTORY_DAYS,
        policy_total.fill_rate() * 100.0,
        policy_total.average_inventory,
        policy_total.orders
    );
    say!(
        "| naive min/max (min 14, max 42 days of the warm-up's average demand, fixed) | {:.1}% | {:.0} | {} |",
        naive_total.fill_rate() * 100.0,
        naive_total.average_inventory,
        naive_total.orders
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TraceFormat {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The SKU of the lot to trace forward (with --lot).
    #[arg(long, requires = "lot", conflicts_with = "order")]
    sku: Option<String>,
    /// The lot to trace forward: the receipts it came from and the orders it went to.
    #[arg(long, requires = "sku")]
    lot: Option<String>,
    /// The order to trace backward: the lots of its lines and the receipts and suppliers
    /// they came from.
    #[arg(long, required_unless_present = "lot")]
    order: Option<String>,
    #[command(flatten)]
    point: PointArgs,
    /// `table` for people, `json` for programs.
    #[arg(long, value_enum, default_value = "table")]
    format: TraceFormat,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// `erp trace`: builds the trace view at the point asked for and answers from it.
pub async fn trace(log: &JetStreamLog, args: &TraceArgs) -> anyhow::Result<()> {
    use projections::View;
    use projections::trace::{Trace, TraceQuery};
    let first = first_point(&args.point)?;
    let point = point::resolve(log, first).await?;
    let replayed = replay::replay::<_, Trace>(
        log,
        std::slice::from_ref(&point),
        progress_printer("trace", args.quiet),
    )
    .await
    .context("replay stopped")?;
    let built = &replayed.built[0];
    let query = match (&args.sku, &args.lot, &args.order) {
        (Some(sku), Some(lot), _) => TraceQuery::Lot {
            sku: sku.clone(),
            lot: lot.clone(),
        },
        (_, _, Some(order)) => TraceQuery::Order {
            order: order.clone(),
        },
        _ => bail!("give --sku and --lot (forward), or --order (backward)"),
    };
    let answer = match built.model.answer(&query) {
        Ok(projections::view::Answer::Value(v)) => v,
        Ok(_) => bail!("the trace view answered with a read of the log"),
        Err(e) => bail!("{} ({})", e.message, built.point),
    };
    if matches!(args.format, TraceFormat::Json) {
        say!(
            "{}",
            serde_json::json!({"point": built.point.to_string(), "trace": answer})
        );
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let receipt_line = |r: &serde_json::Value| {
        format!(
            "  {}  {}  {} units  seq {}{}{}",
            text(&r["effective_at"]),
            text(&r["location"]),
            text(&r["qty"]),
            text(&r["seq"]),
            r["purchase_order"]
                .as_str()
                .map(|po| format!("  purchase order {po}"))
                .unwrap_or_default(),
            r["supplier"]
                .as_str()
                .map(|s| format!("  supplier {s}"))
                .unwrap_or_default(),
        )
    };
    say!("{}", built.point);
    match query {
        TraceQuery::Lot { .. } => {
            say!(
                "lot {} of {}, expires {}: picked {}, shipped {}, returned {}",
                text(&answer["lot"]),
                text(&answer["sku"]),
                text(&answer["expires_on"]),
                text(&answer["picked"]),
                text(&answer["shipped"]),
                text(&answer["returned"])
            );
            say!("came from:");
            for r in answer["receipts"].as_array().into_iter().flatten() {
                say!("{}", receipt_line(r));
            }
            let orders = answer["orders"].as_object().cloned().unwrap_or_default();
            say!("went to {} orders:", orders.len());
            say!(
                "  {:<16} {:<12} {:<20} {:>7} {:>7} {:>8}  first shipped",
                "order",
                "channel",
                "external ref",
                "picked",
                "shipped",
                "returned"
            );
            for o in orders.values() {
                say!(
                    "  {:<16} {:<12} {:<20} {:>7} {:>7} {:>8}  {}",
                    text(&o["order"]),
                    text(&o["channel"]),
                    text(&o["external_ref"]),
                    text(&o["picked"]),
                    text(&o["shipped"]),
                    text(&o["returned"]),
                    text(&o["first_shipped_at"])
                );
            }
        }
        _ => {
            let external = match answer["external_ref"].as_str() {
                Some("") | None => String::new(),
                Some(r) => format!(", external ref {r}"),
            };
            say!(
                "order {}, channel {}{external}",
                text(&answer["order"]),
                text(&answer["channel"])
            );
            for line in answer["lines"].as_array().into_iter().flatten() {
                for lot in line["lots"].as_array().into_iter().flatten() {
                    say!(
                        "line {}: {} lot {} (expires {}): picked {}, shipped {}; came from:",
                        text(&line["line"]),
                        text(&lot["sku"]),
                        text(&lot["lot"]),
                        text(&lot["expires_on"]),
                        text(&lot["picked"]),
                        text(&lot["shipped"])
                    );
                    for r in lot["receipts"].as_array().into_iter().flatten() {
                        say!("{}", receipt_line(r));
                    }
                }
            }
        }
    }
    Ok(())
}

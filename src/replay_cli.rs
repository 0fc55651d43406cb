//! `erp replay` and `erp verify`: argument definitions and glue over the `replay` crate.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use ledger::jetstream::JetStreamLog;
use projections::allocation::Allocation;
use projections::ats::Ats;
use projections::audit::Audit;
use projections::finance::Finance;
use projections::margin::Margin;
use replay::output::{self, Filter, Format};
use replay::point::{self, Knowledge, Point, Resolved};
use replay::verify::{Digest, VerifyOptions};
use replay::{Model, Progress, ViewModel, WriteModel};

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
    /// The processor's write model: stock balances and orders.
    State,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// What to build.
    view: ReplayView,
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

/// Progress on stderr: one updating line on a terminal, a line every few seconds otherwise.
fn progress_printer(what: &'static str, quiet: bool) -> impl FnMut(Progress) {
    let tty = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    move |p: Progress| {
        if quiet {
            return;
        }
        let percent = if p.total == 0 {
            100.0
        } else {
            p.done as f64 * 100.0 / p.total as f64
        };
        let text = format!(
            "{what}: {}/{} ({percent:.0}%), {:.0} records/s, {:.0} s left",
            p.done, p.total, p.events_per_second, p.eta_seconds
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{text}\x1b[K");
            if p.done >= p.total {
                let _ = writeln!(err);
            }
        } else if p.done >= p.total || last_line.elapsed().as_secs() >= 5 {
            last_line = std::time::Instant::now();
            let _ = writeln!(err, "{text}");
        }
    }
}

pub async fn replay(log: &JetStreamLog, args: &ReplayArgs) -> anyhow::Result<()> {
    let knowledge = match (args.as_of_seq, &args.as_recorded) {
        (Some(seq), _) => Knowledge::Seq(seq),
        (None, Some(_)) => {
            Knowledge::Recorded(time("as-recorded", &args.as_recorded)?.expect("given"))
        }
        (None, None) => Knowledge::Latest,
    };
    let first = Point {
        knowledge,
        effective: time("as-effective", &args.as_effective)?,
    };
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
        ReplayView::Ats => {
            build::<ViewModel<Ats>>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::Allocation => {
            build::<ViewModel<Allocation>>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::Audit => {
            build::<ViewModel<Audit>>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::Margin => {
            build::<ViewModel<Margin>>(log, &points, format, &filter, args.quiet).await?
        }
        ReplayView::Finance => {
            build::<ViewModel<Finance>>(log, &points, format, &filter, args.quiet).await?
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
                println!("digest at {seq}: {digest}");
            }
            if report.last_seq == 0 {
                println!("the ledger is empty: nothing to verify");
                return Ok(());
            }
            println!(
                "verified sequences 1..={} ({} events, {} batch markers) in {:.1} s: sequences contiguous, hash chains intact, batches whole, invariants hold",
                report.last_seq,
                report.events,
                report.markers,
                report.elapsed.as_secs_f64()
            );
            println!("digest at {}: {}", report.last_seq, report.digest);
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
/// each journal line as CSV. Ends with a check that debits equal credits.
pub async fn journal(log: &JetStreamLog, args: &JournalArgs) -> anyhow::Result<()> {
    use ledger::{EventLog, LogCursor, LogRecord, ReadFrom, ReadUntil};
    let until = match args.until {
        Some(seq) => ReadUntil::Sequence(seq),
        None => ReadUntil::CaughtUp,
    };
    let mut cursor = log.read(ReadFrom::Start, until).await?;
    let mut books = projections::books::Books::default();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let header = "seq,recorded_at,effective_at,event_type,entity,currency,account,debit,credit,sku,location,order,channel\n";
    let mut write = |text: &str| -> anyhow::Result<bool> {
        match out.write_all(text.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    write(header)?;
    let (mut debits, mut credits) = (rust_decimal::Decimal::ZERO, rust_decimal::Decimal::ZERO);
    let mut lines = 0u64;
    while let Some(record) = cursor.next().await {
        let LogRecord::Event(event) = record? else {
            continue;
        };
        let posted = books.post(&event);
        if !projections::books::balanced(&posted.lines) {
            bail!("event {} does not balance: {:?}", event.seq, posted.lines);
        }
        for l in &posted.lines {
            debits += l.debit();
            credits += l.credit();
            lines += 1;
            let row = [
                event.seq.to_string(),
                event.recorded_at.to_string(),
                event.envelope.effective_at.to_string(),
                event.envelope.event.event_type().name().to_owned(),
                l.entity.clone(),
                l.currency.clone(),
                l.account.name().to_owned(),
                l.debit().to_string(),
                l.credit().to_string(),
                l.sku.clone().unwrap_or_default(),
                l.location.clone().unwrap_or_default(),
                l.order.clone().unwrap_or_default(),
                l.channel.clone().unwrap_or_default(),
            ]
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",");
            if !write(&(row + "\n"))? {
                return Ok(());
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    eprintln!("{lines} journal lines; debits {debits}, credits {credits}");
    if debits != credits {
        bail!("debits {debits} and credits {credits} differ");
    }
    Ok(())
}

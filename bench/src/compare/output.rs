//! The comparison's output: min / median / max per tool and size, gdrx/perftest ratios of the
//! medians, the two tables (same sender first, tool against tool second), the target lines and
//! the three-panel plot (bandwidth, message rate, receiver CPU per message, with min-max bars).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{Comparison, Mode, Sample, SizeSummary, Table};
use crate::report::RecvRow;

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest, median and largest of a figure over the repetitions.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of `v`; all 0 for none.
    pub fn of(v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        Spread {
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median: median(v),
        }
    }

    /// `median (min-max)` with `prec` decimals.
    fn show(&self, prec: usize) -> String {
        format!(
            "{:.prec$} ({:.prec$}-{:.prec$})",
            self.median, self.min, self.max
        )
    }
}

/// One tool's figures at one size, over its repetitions.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Figures {
    /// Average bandwidth, MiB/s.
    pub bw_avg_mib_s: Spread,
    /// Peak bandwidth, MiB/s.
    pub bw_peak_mib_s: Spread,
    /// Message rate, Mpps.
    pub msg_rate_mpps: Spread,
    /// Receiving process CPU per message, microseconds.
    pub rx_cpu_us_per_msg: Spread,
    /// Sending process CPU per message, microseconds.
    pub tx_cpu_us_per_msg: Spread,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn figures(samples: &[&Sample]) -> Figures {
    let m = |f: fn(&Sample) -> f64| Spread::of(samples.iter().map(|s| f(s)).collect());
    Figures {
        bw_avg_mib_s: m(|s| s.bw_avg_mib_s),
        bw_peak_mib_s: m(|s| s.bw_peak_mib_s),
        msg_rate_mpps: m(|s| s.msg_rate_mpps),
        rx_cpu_us_per_msg: m(|s| s.rx_cpu_us_per_msg),
        tx_cpu_us_per_msg: m(|s| s.tx_cpu_us_per_msg),
    }
}

/// Per size: perftest's runs against the gdrx runs of `mode`, with ratios of the medians.
pub fn summarize(sizes: &[u32], samples: &[Sample], mode: Mode) -> Vec<SizeSummary> {
    sizes
        .iter()
        .map(|&b| {
            let at = samples.iter().filter(|s| s.bytes == b);
            let p: Vec<&Sample> = at.clone().filter(|s| s.tool == "perftest").collect();
            let g: Vec<&Sample> = at
                .filter(|s| s.tool == "gdrx" && s.sender == mode.gdrx_sender())
                .collect();
            let (pm, gm) = (figures(&p), figures(&g));
            let rows: Vec<&RecvRow> = g.iter().filter_map(|s| s.gdrx.as_ref()).collect();
            let rnr = |v: &[&Sample]| -> Option<u64> { v.iter().map(|s| s.rnr_naks).sum() };
            SizeSummary {
                bytes: b,
                iters: 0,
                perftest: pm,
                gdrx: gm,
                bw_ratio: ratio(gm.bw_avg_mib_s.median, pm.bw_avg_mib_s.median),
                msg_rate_ratio: ratio(gm.msg_rate_mpps.median, pm.msg_rate_mpps.median),
                cpu_ratio: ratio(gm.rx_cpu_us_per_msg.median, pm.rx_cpu_us_per_msg.median),
                gdrx_lat_p50_us: median(rows.iter().map(|r| r.lat_p50_us).collect()),
                gdrx_lat_p99_us: median(rows.iter().map(|r| r.lat_p99_us).collect()),
                gdrx_pool_empty_events: rows.iter().map(|r| r.pool_empty_events).sum(),
                gdrx_rnr_naks: rnr(&g),
                perftest_rnr_naks: rnr(&p),
                gdrx_thread_cpu_us_per_msg: median(
                    rows.iter().map(|r| r.rx_cpu_us_per_msg).collect(),
                ),
            }
        })
        .collect()
}

/// Both tables, the run's configuration and the target lines.
pub fn table(c: &Comparison) -> String {
    let mut t = String::new();
    let cfg = &c.config;
    let _ = writeln!(
        t,
        "gdrx-bench compare on {}: {} ({}) against gdrx's receiver; {} runs per size and \
         receiver, in a shuffled order; median (min-max); {}",
        c.device,
        c.op.perftest(),
        c.perftest_version,
        cfg.reps,
        match cfg.duration_s {
            Some(d) => format!("{d} s per run"),
            None => format!(
                "messages per connection: {}",
                cfg.iters
                    .iter()
                    .map(|(b, n)| format!("{n} at {b} B"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    );
    let _ = writeln!(t, "{} QP(s); gdrx receiver: {}", cfg.qps, cfg.gdrx_receiver);
    if let Some(e) = &c.emulation {
        let _ = writeln!(
            t,
            "measured under emulation ({e}): compare ratios, not figures"
        );
    }
    let tables: Vec<&Table> = c.same_sender.iter().chain([&c.tool_vs_tool]).collect();
    for tab in tables {
        let _ = writeln!(t);
        table_of(&mut t, c, tab);
    }
    if c.same_sender.is_none() {
        let _ = writeln!(
            t,
            "\n(no same-sender table for {}: perftest's RDMA WRITE completes nothing at the \
             receiver, so there is no receive path for gdrx to be fed by it)",
            c.op.perftest()
        );
    }
    for line in targets(c) {
        let _ = writeln!(t, "{line}");
    }
    t
}

fn table_of(t: &mut String, c: &Comparison, tab: &Table) {
    let tool = c.op.perftest();
    let _ = writeln!(
        t,
        "{}: perftest's server against {}",
        match tab.mode {
            Mode::SameSender => format!("SAME SENDER ({tool} -R feeds both receivers)"),
            Mode::ToolVsTool =>
                format!("TOOL AGAINST TOOL ({tool} feeds perftest, gdrx-bench client feeds gdrx)"),
        },
        match tab.mode {
            Mode::SameSender => "gdrx-bench server --perftest",
            Mode::ToolVsTool => "gdrx-bench server",
        }
    );
    let _ = writeln!(
        t,
        "{:>7} | {:>22} {:>22} {:>6} | {:>25} {:>25} {:>6} | {:>17} {:>17} {:>6} | {:>7} {:>7} {:>5} {:>9}",
        "#bytes",
        "perftest",
        "gdrx",
        "ratio",
        "perftest",
        "gdrx",
        "ratio",
        "perftest",
        "gdrx",
        "ratio",
        "p50",
        "p99",
        "empty",
        "RNR NAKs"
    );
    let _ = writeln!(
        t,
        "{:>7} | {:>52} | {:>58} | {:>42} | {:>7} {:>7} {:>5} {:>9}",
        "",
        "BW average [MiB/s]",
        "message rate [Mpps]",
        "rx CPU [us/msg]",
        "[us]",
        "[us]",
        "pool",
        "pt/gdrx"
    );
    for s in &tab.sizes {
        let _ = writeln!(
            t,
            "{:>7} | {:>22} {:>22} {:>5.2}x | {:>25} {:>25} {:>5.2}x | {:>17} {:>17} {:>5.2}x | {:>7.1} {:>7.1} {:>5} {:>9}",
            s.bytes,
            s.perftest.bw_avg_mib_s.show(1),
            s.gdrx.bw_avg_mib_s.show(1),
            s.bw_ratio,
            s.perftest.msg_rate_mpps.show(4),
            s.gdrx.msg_rate_mpps.show(4),
            s.msg_rate_ratio,
            s.perftest.rx_cpu_us_per_msg.show(1),
            s.gdrx.rx_cpu_us_per_msg.show(1),
            s.cpu_ratio,
            s.gdrx_lat_p50_us,
            s.gdrx_lat_p99_us,
            s.gdrx_pool_empty_events,
            format!(
                "{}/{}",
                s.perftest_rnr_naks.map_or("-".into(), |n| n.to_string()),
                s.gdrx_rnr_naks.map_or("-".into(), |n| n.to_string())
            )
        );
    }
    let _ = writeln!(
        t,
        "ratios are gdrx / perftest of the medians: above 1 is better for bandwidth and rate, \
         below 1 for CPU; rx CPU is the receiving process's user+system time from ready to exit, \
         per message; sender CPU [us/msg], perftest/gdrx: {}",
        tab.sizes
            .iter()
            .map(|s| format!(
                "{} B {:.1}/{:.1}",
                s.bytes, s.perftest.tx_cpu_us_per_msg.median, s.gdrx.tx_cpu_us_per_msg.median
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Issue 14's targets, on the same-sender table (the receivers fed by one sender), as met /
/// missed lines for the sizes this comparison ran.
pub fn targets(c: &Comparison) -> Vec<String> {
    let Some(tab) = &c.same_sender else {
        return Vec::new();
    };
    let tool = c.op.perftest();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut v: Vec<String> = tab
        .sizes
        .iter()
        .map(|s| {
            format!(
                "target (same sender): avg BW at {} B >= 1.10x {tool}'s receiver: {:.2}x ({})",
                s.bytes,
                s.bw_ratio,
                verdict(s.bw_ratio >= 1.10)
            )
        })
        .collect();
    if !tab.sizes.is_empty() {
        let worst = tab
            .sizes
            .iter()
            .map(|s| s.cpu_ratio)
            .fold(f64::NAN, f64::max);
        v.push(format!(
            "target (same sender): receiver CPU per message <= 0.8x {tool}'s at every size: \
             worst {worst:.2}x ({})",
            verdict(worst <= 0.8)
        ));
    }
    v
}

fn human(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.0}M", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.0}K", b / 1024.0)
    } else {
        format!("{b:.0}")
    }
}

/// One plotted series: a label, a colour, and per size the spread of the plotted figure.
type Series = (String, plotters::style::RGBColor, Vec<(f64, Spread)>);

/// Draws three panels against message size: average bandwidth, message rate and receiver CPU
/// per message; a line through the medians and a min-max bar per point, for perftest's
/// receiver and gdrx's in each mode.
///
/// # Errors
/// When the file cannot be written.
pub fn plot(path: &Path, c: &Comparison) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let tool = c.op.perftest();
    let mut sizes: Vec<f64> = c
        .tool_vs_tool
        .sizes
        .iter()
        .map(|s| f64::from(s.bytes))
        .collect();
    sizes.dedup();
    let xmin = sizes.first().copied().unwrap_or(1.0);
    let xmax = sizes.last().copied().unwrap_or(2.0);
    let root = SVGBackend::new(path, (1000, 1200)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "receive path vs message size on {}: gdrx against {tool}'s receiver{}",
        c.device,
        if c.emulation.is_some() {
            " (under emulation: compare ratios only)"
        } else {
            ""
        }
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let panels = root.split_evenly((3, 1));
    type Pick = fn(&super::Figures) -> Spread;
    let figs: [(&str, Pick); 3] = [
        ("average bandwidth [MiB/s]", |f| f.bw_avg_mib_s),
        ("message rate [Mpps]", |f| f.msg_rate_mpps),
        ("receiver CPU [us per message]", |f| f.rx_cpu_us_per_msg),
    ];
    for (panel, (ydesc, pick)) in panels.iter().zip(figs) {
        let of = |tab: &Table, gdrx: bool| -> Vec<(f64, Spread)> {
            tab.sizes
                .iter()
                .map(|s| {
                    (
                        f64::from(s.bytes),
                        pick(if gdrx { &s.gdrx } else { &s.perftest }),
                    )
                })
                .collect()
        };
        let mut series: Vec<Series> = vec![(
            format!("{tool}'s receiver (perftest)"),
            RGBColor(200, 60, 40),
            of(&c.tool_vs_tool, false),
        )];
        if let Some(same) = &c.same_sender {
            series.push((
                format!("gdrx's receiver, fed by {tool}"),
                RGBColor(30, 90, 200),
                of(same, true),
            ));
        }
        series.push((
            "gdrx's receiver, fed by gdrx-bench client".to_string(),
            RGBColor(40, 150, 80),
            of(&c.tool_vs_tool, true),
        ));
        let ymax = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1.max))
            .fold(0.0, f64::max)
            .max(1e-6)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (xmin / 1.5..xmax * 1.5)
                    .log_scale()
                    .with_key_points(sizes.clone()),
                0.0..ymax,
            )?;
        chart
            .configure_mesh()
            .x_desc("message size [bytes]")
            .y_desc(ydesc)
            .x_label_formatter(&|v| human(*v))
            .draw()?;
        for (label, color, data) in series {
            let med: Vec<(f64, f64)> = data.iter().map(|&(x, s)| (x, s.median)).collect();
            chart
                .draw_series(LineSeries::new(med.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                med.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
            chart.draw_series(data.iter().map(|&(x, s)| {
                ErrorBar::new_vertical(x, s.min, s.median, s.max, color.stroke_width(1), 8)
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Config, Figures};
    use crate::opts::Op;

    fn sample(tool: &'static str, sender: &'static str, bytes: u32, bw: f64) -> Sample {
        Sample {
            tool,
            sender,
            rep: 1,
            turn: 0,
            bytes,
            messages: 100,
            bw_avg_mib_s: bw,
            bw_peak_mib_s: bw,
            msg_rate_mpps: bw / 4.0,
            rx_cpu_us_per_msg: 10.0 / bw,
            rx_cpu_s: 0.0,
            rx_process_cpu_s: 0.0,
            rx_wall_s: 0.0,
            tx_cpu_us_per_msg: 0.0,
            rnr_naks: None,
            gdrx: None,
            perftest: None,
        }
    }

    #[test]
    fn spreads_medians_and_ratios_per_mode() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(
            Spread::of(vec![3.0, 1.0, 2.0]),
            Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        let v = vec![
            sample("perftest", "perftest", 4096, 10.0),
            sample("perftest", "perftest", 4096, 30.0),
            sample("perftest", "perftest", 4096, 20.0),
            sample("gdrx", "gdrx-bench", 4096, 22.0),
            sample("gdrx", "gdrx-bench", 4096, 40.0),
            sample("gdrx", "gdrx-bench", 4096, 1.0),
            sample("gdrx", "perftest", 4096, 25.0),
            sample("gdrx", "perftest", 4096, 26.0),
            sample("gdrx", "perftest", 4096, 24.0),
        ];
        let tool = summarize(&[4096], &v, Mode::ToolVsTool);
        assert_eq!(tool[0].perftest.bw_avg_mib_s.median, 20.0);
        assert_eq!(tool[0].perftest.bw_avg_mib_s.min, 10.0);
        assert_eq!(tool[0].perftest.bw_avg_mib_s.max, 30.0);
        assert_eq!(tool[0].gdrx.bw_avg_mib_s.median, 22.0);
        assert!((tool[0].bw_ratio - 1.1).abs() < 1e-12);
        assert!((tool[0].cpu_ratio - (10.0 / 22.0) / (10.0 / 20.0)).abs() < 1e-12);
        let same = summarize(&[4096], &v, Mode::SameSender);
        assert_eq!(
            same[0].gdrx.bw_avg_mib_s.median, 25.0,
            "only the perftest-fed runs"
        );
        assert!((same[0].bw_ratio - 1.25).abs() < 1e-12);
    }

    fn comparison(dir: &Path, same: bool) -> Comparison {
        let f = |bw: f64| Figures {
            bw_avg_mib_s: Spread {
                min: bw * 0.9,
                median: bw,
                max: bw * 1.1,
            },
            ..Figures::default()
        };
        let sz = |b, p: f64, g: f64| SizeSummary {
            bytes: b,
            iters: 100,
            perftest: f(p),
            gdrx: f(g),
            bw_ratio: g / p,
            msg_rate_ratio: 1.0,
            cpu_ratio: 0.7,
            gdrx_lat_p50_us: 1.0,
            gdrx_lat_p99_us: 2.0,
            gdrx_pool_empty_events: 0,
            gdrx_rnr_naks: None,
            perftest_rnr_naks: None,
            gdrx_thread_cpu_us_per_msg: 1.0,
        };
        let tab = |mode, k: f64| Table {
            mode,
            sizes: vec![
                sz(64, 0.7, 0.8 * k),
                sz(4096, 18.0, 19.0 * k),
                sz(65536, 30.0, 29.0 * k),
            ],
        };
        Comparison {
            schema: crate::compare::SCHEMA,
            config: Config {
                sizes: vec![64, 4096, 65536],
                reps: 5,
                iters: vec![(64, 100), (4096, 100), (65536, 100)],
                duration_s: None,
                qps: 1,
                post_list: 1,
                tx_depth: 128,
                cq_mod: 100,
                rx_depth: 512,
                srq_depth: 512,
                pool_slots: 1024,
                provider: "host".into(),
                consumers: 1,
                hold: "0".into(),
                events: false,
                gdrx_receiver: "host".into(),
                order_seed: 1,
            },
            device: "rxe0".into(),
            perftest: "ib_send_bw".into(),
            perftest_version: "Version: 6.06".into(),
            op: if same { Op::Send } else { Op::WriteImm },
            emulation: Some("rxe0 is a software RDMA device".into()),
            same_sender: same.then(|| tab(Mode::SameSender, 1.2)),
            tool_vs_tool: tab(Mode::ToolVsTool, 1.0),
            samples: vec![],
            plot: dir.join("p.svg"),
        }
    }

    #[test]
    fn the_plot_has_three_panels_with_error_bars_at_the_sizes_measured() {
        let dir = std::env::temp_dir().join(format!("gdrx-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = comparison(&dir, true);
        plot(&c.plot, &c).unwrap();
        let svg = std::fs::read_to_string(&c.plot)
            .unwrap()
            .replace("&apos;", "'");
        assert!(svg.starts_with("<svg"), "an SVG document");
        for label in [
            "ib_send_bw's receiver (perftest)",
            "gdrx's receiver, fed by ib_send_bw",
            "gdrx's receiver, fed by gdrx-bench client",
            "average bandwidth [MiB/s]",
            "message rate [Mpps]",
            "receiver CPU [us per message]",
            "under emulation",
        ] {
            assert!(svg.contains(label), "the plot says `{label}`");
        }
        assert!(
            svg.matches("<circle").count() >= 3 * 3 * 3,
            "a point per size, series and panel"
        );
        for tick in ["64", "4K", "64K"] {
            assert_eq!(
                svg.lines().filter(|l| l.trim() == tick).count(),
                3,
                "an x tick {tick} at a size measured, in each panel"
            );
        }
        let t = table(&c);
        let same = t.find("SAME SENDER").expect("the same-sender table");
        let tool = t.find("TOOL AGAINST TOOL").expect("the tool-vs-tool table");
        assert!(same < tool, "the same-sender table comes first:\n{t}");
        assert!(t.contains("18.0 (16.2-19.8)"), "median (min-max):\n{t}");
        assert!(
            t.contains("target (same sender): avg BW at 65536 B >= 1.10x ib_send_bw's receiver: 1.16x (met)"),
            "{t}"
        );
        assert!(
            t.contains("avg BW at 64 B >= 1.10x ib_send_bw's receiver: 1.37x (met)"),
            "{t}"
        );
        assert!(t.contains("worst 0.70x (met)"), "{t}");
        assert!(t.contains("under emulation"), "{t}");
        let w = table(&comparison(&dir, false));
        assert!(!w.contains("SAME SENDER") && !w.contains("target"), "{w}");
        assert!(w.contains("no same-sender table"), "{w}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The comparison's output: medians and ratios, the side-by-side table, the target lines and
//! the bandwidth-vs-size SVG.

use std::fmt::Write as _;
use std::path::Path;

use super::{Comparison, Medians, Sample, SizeSummary};
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

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn medians(samples: &[&Sample]) -> Medians {
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
    Medians {
        bw_avg_mib_s: m(|s| s.bw_avg_mib_s),
        bw_peak_mib_s: m(|s| s.bw_peak_mib_s),
        msg_rate_mpps: m(|s| s.msg_rate_mpps),
        rx_cpu_us_per_msg: m(|s| s.rx_cpu_us_per_msg),
        tx_cpu_us_per_msg: m(|s| s.tx_cpu_us_per_msg),
    }
}

/// Medians and ratios per size.
pub fn summarize(sizes: &[u32], samples: &[Sample]) -> Vec<SizeSummary> {
    sizes
        .iter()
        .map(|&b| {
            let of = |tool: &str| -> Vec<&Sample> {
                samples
                    .iter()
                    .filter(|s| s.bytes == b && s.tool == tool)
                    .collect()
            };
            let (p, g) = (of("perftest"), of("gdrx"));
            let (pm, gm) = (medians(&p), medians(&g));
            let rows: Vec<&RecvRow> = g.iter().filter_map(|s| s.gdrx.as_ref()).collect();
            let rnr = |v: &[&Sample]| -> Option<u64> { v.iter().map(|s| s.rnr_naks).sum() };
            SizeSummary {
                bytes: b,
                iters: 0,
                perftest: pm,
                gdrx: gm,
                bw_ratio: ratio(gm.bw_avg_mib_s, pm.bw_avg_mib_s),
                msg_rate_ratio: ratio(gm.msg_rate_mpps, pm.msg_rate_mpps),
                cpu_ratio: ratio(gm.rx_cpu_us_per_msg, pm.rx_cpu_us_per_msg),
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

/// The side-by-side table.
pub fn table(c: &Comparison) -> String {
    let mut t = String::new();
    let tool = c.op.perftest();
    let _ = writeln!(
        t,
        "gdrx-bench compare on {}: {} ({}) vs gdrx; {} runs per size and tool, medians; {}",
        c.device,
        tool,
        c.perftest_version,
        c.reps,
        match c.duration_s {
            Some(d) => format!("{d} s per run"),
            None => match c.iters {
                Some(n) => format!("{n} messages per connection"),
                None => format!(
                    "messages per connection: {}",
                    c.sizes
                        .iter()
                        .map(|s| format!("{} at {} B", s.iters, s.bytes))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    );
    let _ = writeln!(t, "gdrx receiver: {}", c.gdrx_receiver);
    let _ = writeln!(
        t,
        "{:>8} | {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>6} {:>11}",
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
        "lat p50",
        "lat p99",
        "empty",
        "RNR NAKs"
    );
    let _ = writeln!(
        t,
        "{:>8} | {:>28} | {:>28} | {:>26} | {:>8} {:>8} {:>6} {:>11}",
        "",
        "BW average [MiB/s]",
        "message rate [Mpps]",
        "rx CPU [us/msg]",
        "[us]",
        "[us]",
        "pool",
        "perftest/gdrx"
    );
    for s in &c.sizes {
        let _ = writeln!(
            t,
            "{:>8} | {:>10.2} {:>10.2} {:>5.2}x | {:>10.5} {:>10.5} {:>5.2}x | {:>9.1} {:>9.1} {:>5.2}x | {:>8.1} {:>8.1} {:>6} {:>11}",
            s.bytes,
            s.perftest.bw_avg_mib_s,
            s.gdrx.bw_avg_mib_s,
            s.bw_ratio,
            s.perftest.msg_rate_mpps,
            s.gdrx.msg_rate_mpps,
            s.msg_rate_ratio,
            s.perftest.rx_cpu_us_per_msg,
            s.gdrx.rx_cpu_us_per_msg,
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
        "ratios are gdrx / perftest: above 1 is better for bandwidth and rate, below 1 for CPU; \
         rx CPU is the receiving process's user+system time from ready to exit, per message"
    );
    let _ = writeln!(
        t,
        "sender CPU [us/msg], perftest/gdrx: {}",
        c.sizes
            .iter()
            .map(|s| format!(
                "{} B {:.1}/{:.1}",
                s.bytes, s.perftest.tx_cpu_us_per_msg, s.gdrx.tx_cpu_us_per_msg
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for line in targets(c) {
        let _ = writeln!(t, "{line}");
    }
    t
}

/// The targets, as met / missed lines, for the sizes this comparison ran.
pub fn targets(c: &Comparison) -> Vec<String> {
    let mut v = Vec::new();
    let tool = c.op.perftest();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for s in &c.sizes {
        if s.bytes == 4096 || s.bytes == 65536 {
            v.push(format!(
                "target: avg BW at {} B >= 1.0x {tool}: {:.2}x ({})",
                s.bytes,
                s.bw_ratio,
                verdict(s.bw_ratio >= 1.0)
            ));
        }
        if s.bytes == 64 {
            v.push(format!(
                "target: message rate at 64 B >= 1.0x {tool}: {:.2}x ({})",
                s.msg_rate_ratio,
                verdict(s.msg_rate_ratio >= 1.0)
            ));
        }
    }
    if !c.sizes.is_empty() {
        let worst = c.sizes.iter().map(|s| s.cpu_ratio).fold(f64::NAN, f64::max);
        v.push(format!(
            "target: receiver CPU per message <= {tool}'s at every size: worst {worst:.2}x ({})",
            verdict(worst <= 1.0)
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

/// Draws average bandwidth against message size for both tools.
///
/// # Errors
/// When the file cannot be written.
pub fn plot(path: &Path, c: &Comparison) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let pts = |f: fn(&SizeSummary) -> f64| -> Vec<(f64, f64)> {
        c.sizes.iter().map(|s| (f64::from(s.bytes), f(s))).collect()
    };
    let (p, g) = (
        pts(|s| s.perftest.bw_avg_mib_s),
        pts(|s| s.gdrx.bw_avg_mib_s),
    );
    let xmin = c.sizes.iter().map(|s| s.bytes).min().unwrap_or(1) as f64;
    let xmax = c.sizes.iter().map(|s| s.bytes).max().unwrap_or(2) as f64;
    let ymax = p
        .iter()
        .chain(&g)
        .map(|&(_, y)| y)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let tool = c.op.perftest();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "receive bandwidth vs message size on {}: gdrx vs {tool}",
                c.device
            ),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin / 1.5..xmax * 1.5).log_scale(), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("message size [bytes]")
        .y_desc("average bandwidth [MiB/s] (medians)")
        .x_label_formatter(&|v| human(*v))
        .draw()?;
    let series = [
        (format!("{tool} (perftest)"), p, RGBColor(200, 60, 40)),
        ("gdrx".to_string(), g, RGBColor(30, 90, 200)),
    ];
    for (label, data, color) in series {
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            data.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opts::Op;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        let s = |tool, bw: f64| Sample {
            tool,
            rep: 1,
            bytes: 4096,
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
        };
        let v = vec![
            s("perftest", 10.0),
            s("perftest", 30.0),
            s("perftest", 20.0),
            s("gdrx", 22.0),
            s("gdrx", 40.0),
            s("gdrx", 1.0),
        ];
        let sum = summarize(&[4096], &v);
        assert_eq!(sum[0].perftest.bw_avg_mib_s, 20.0);
        assert_eq!(sum[0].gdrx.bw_avg_mib_s, 22.0);
        assert!((sum[0].bw_ratio - 1.1).abs() < 1e-12);
        assert!((sum[0].cpu_ratio - (10.0 / 22.0) / (10.0 / 20.0)).abs() < 1e-12);
    }

    #[test]
    fn the_plot_is_an_svg_with_both_series() {
        let dir = std::env::temp_dir().join(format!("gdrx-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = |bw| Medians {
            bw_avg_mib_s: bw,
            ..Medians::default()
        };
        let sz = |b, p, g| SizeSummary {
            bytes: b,
            iters: 100,
            perftest: m(p),
            gdrx: m(g),
            bw_ratio: g / p,
            msg_rate_ratio: 1.0,
            cpu_ratio: 1.0,
            gdrx_lat_p50_us: 1.0,
            gdrx_lat_p99_us: 2.0,
            gdrx_pool_empty_events: 0,
            gdrx_rnr_naks: None,
            perftest_rnr_naks: None,
            gdrx_thread_cpu_us_per_msg: 1.0,
        };
        let c = Comparison {
            device: "rxe0".into(),
            perftest: "ib_send_bw".into(),
            perftest_version: "Version: 6.06".into(),
            op: Op::Send,
            reps: 3,
            iters: Some(100),
            duration_s: None,
            qps: 1,
            gdrx_receiver: "host".into(),
            sizes: vec![
                sz(64, 0.7, 0.8),
                sz(4096, 18.0, 19.0),
                sz(65536, 30.0, 29.0),
            ],
            samples: vec![],
            plot: dir.join("p.svg"),
        };
        plot(&c.plot, &c).unwrap();
        let svg = std::fs::read_to_string(&c.plot).unwrap();
        assert!(svg.starts_with("<svg"), "an SVG document");
        assert!(svg.contains("gdrx") && svg.contains("ib_send_bw (perftest)"));
        assert!(
            svg.matches("<circle").count() >= 6,
            "a point per size and tool"
        );
        let t = table(&c);
        assert!(
            t.contains("avg BW at 65536 B >= 1.0x ib_send_bw: 0.97x (MISSED)"),
            "{t}"
        );
        assert!(t.contains("message rate at 64 B"), "{t}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

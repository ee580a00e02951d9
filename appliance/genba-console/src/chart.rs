//! Stream charts as SVG, drawn on the server with plotters: the values (or per-bucket averages
//! with a min-max band), thresholds as dashed lines, alarm periods shaded.

use plotters::prelude::*;

/// What one chart shows.
pub struct ChartData<'a> {
    pub from_ms: i64,
    pub to_ms: i64,
    /// (time, value): raw points or bucket averages.
    pub points: &'a [(i64, f64)],
    /// (time, min, max) per bucket, drawn as a band behind the line (empty for raw points).
    pub bands: &'a [(i64, f64, f64)],
    pub thresholds: &'a [f64],
    /// Alarm periods (start, end; end = `to_ms` while open).
    pub alarms: &'a [(i64, i64)],
    pub unit: &'a str,
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 260;

fn time_label(ms: &i64, span_ms: i64) -> String {
    use chrono::TimeZone;
    let Some(t) = chrono::Local.timestamp_millis_opt(*ms).single() else {
        return String::new();
    };
    if span_ms <= 2 * 86_400_000 {
        t.format("%H:%M").to_string()
    } else if span_ms <= 62 * 86_400_000 {
        t.format("%m-%d").to_string()
    } else {
        t.format("%Y-%m").to_string()
    }
}

/// The SVG of a chart; a short message in the picture when there is nothing to draw.
pub fn svg(data: &ChartData) -> String {
    let mut out = String::new();
    if let Err(e) = draw(data, &mut out) {
        return format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} 40\"><text x=\"10\" y=\"25\">chart: {}</text></svg>",
            maud::html!((e.to_string())).into_string()
        );
    }
    out
}

fn draw(data: &ChartData, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let values = data
        .points
        .iter()
        .map(|p| p.1)
        .chain(data.bands.iter().flat_map(|b| [b.1, b.2]))
        .chain(data.thresholds.iter().copied());
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(0.5);
    let (lo, hi) = (lo - pad, hi + pad);
    let span = (data.to_ms - data.from_ms).max(1);
    let mut chart = ChartBuilder::on(&root)
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(52)
        .build_cartesian_2d(data.from_ms..data.to_ms, lo..hi)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(236, 238, 241))
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|ms| time_label(ms, span))
        .y_label_formatter(&|v| {
            if data.unit.is_empty() {
                format!("{v:.1}")
            } else {
                format!("{v:.1} {}", data.unit)
            }
        })
        .draw()?;
    for (start, end) in data.alarms {
        let (s, e) = ((*start).max(data.from_ms), (*end).min(data.to_ms));
        if s < e {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(s, lo), (e, hi)],
                RGBColor(179, 38, 30).mix(0.15).filled(),
            )))?;
        }
    }
    if !data.bands.is_empty() {
        chart.draw_series(data.bands.iter().map(|(t, mn, mx)| {
            let w = (span / 400).max(1);
            Rectangle::new(
                [(*t, *mn), (*t + w, *mx)],
                RGBColor(11, 87, 208).mix(0.18).filled(),
            )
        }))?;
    }
    for t in data.thresholds {
        chart.draw_series(DashedLineSeries::new(
            [(data.from_ms, *t), (data.to_ms, *t)],
            6,
            4,
            ShapeStyle::from(&RGBColor(179, 38, 30)).stroke_width(1),
        ))?;
    }
    chart.draw_series(LineSeries::new(
        data.points.iter().copied(),
        ShapeStyle::from(&RGBColor(11, 87, 208)).stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_its_line_thresholds_and_alarm_shading() {
        let points: Vec<(i64, f64)> = (0..50)
            .map(|i| (i * 60_000, 4.0 + (i % 7) as f64))
            .collect();
        let svg = svg(&ChartData {
            from_ms: 0,
            to_ms: 50 * 60_000,
            points: &points,
            bands: &[],
            thresholds: &[8.0],
            alarms: &[(10 * 60_000, 20 * 60_000)],
            unit: "°C",
        });
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        let line = svg.split("<polyline").last().unwrap();
        let coords = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(
            coords.split_whitespace().count(),
            50,
            "one vertex per point"
        );
        assert!(svg.contains("°C"));
        assert!(
            svg.contains("opacity=\"0.15\"") || svg.contains("fill-opacity=\"0.15\""),
            "alarm shading"
        );
        let empty = super::svg(&ChartData {
            from_ms: 0,
            to_ms: 1,
            points: &[],
            bands: &[],
            thresholds: &[],
            alarms: &[],
            unit: "",
        });
        assert!(empty.starts_with("<svg"));
    }
}

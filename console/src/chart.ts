// Run history as inline SVG bar charts: no library, no inline script or
// style (the CSP allows neither), and a text alternative for each chart.

import { svg, h } from "./dom";

export interface Series {
  label: string;
  values: number[];
  format: (value: number) => string;
}

/** A bar chart of `series` over `labels` (oldest first), titled and described. */
export function barChart(title: string, labels: string[], series: Series): HTMLElement {
  const width = 480;
  const height = 160;
  const max = Math.max(1, ...series.values);
  const step = labels.length ? width / labels.length : width;
  const bars = series.values.map((value, i) => {
    const barHeight = (value / max) * (height - 20);
    return svg(
      "rect",
      { x: i * step + 2, y: height - barHeight, width: Math.max(1, step - 4), height: barHeight, class: "bar" },
      svg("title", {}, `${labels[i]}: ${series.format(value)}`),
    );
  });
  const summary = `${series.label}: ${series.values.length} runs, highest ${series.format(max)}`;
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, title),
    svg(
      "svg",
      { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": summary },
      svg("text", { x: 4, y: 12, class: "axis" }, series.format(max)),
      bars,
    ),
  );
}

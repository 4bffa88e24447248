// Time-series charts of the plane's timeline, drawn by uPlot (vendor/uplot: MIT, ~50 KB minified,
// canvas, no dependencies). A chart reads its series from the timeline's points by key.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

const COLORS = ["#2f6fde", "#e0672f", "#2a9d6a", "#b23fc2", "#c9a227", "#d2384b"];

// `series`: [{label, key, scale (default "y"), value: (point) => number|null, fill}].
export class TimeChart {
  constructor({ title, series, unit = "", height = 170, min = 0, max = null, format }) {
    this.series = series;
    this.format = format || ((v) => (v === null || v === undefined ? "—" : `${+v.toFixed(3)}${unit}`));
    this.plotEl = h("div", { class: "chart-plot" });
    this.el = h("figure", { class: "chart" }, h("figcaption", { text: title }), this.plotEl);
    this.height = height;
    this.scaleRange = (u, dataMin, dataMax) => [min, max ?? (Math.max(dataMax ?? 0, min) * 1.1 || 1)];
    this.plot = null;
    this.data = [[], ...series.map(() => [])];
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.plotEl);
  }

  make() {
    const width = Math.max(200, this.plotEl.clientWidth);
    const options = {
      width,
      height: this.height,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: { range: this.scaleRange } },
      axes: [
        { stroke: "#8a8f98", grid: { stroke: "rgba(128,128,128,0.15)" } },
        { stroke: "#8a8f98", grid: { stroke: "rgba(128,128,128,0.15)" }, size: 56, values: (u, ticks) => ticks.map((t) => this.format(t)) },
      ],
      series: [
        {},
        ...this.series.map((s, i) => ({
          label: s.label,
          stroke: s.color || COLORS[i % COLORS.length],
          fill: s.fill ? `${s.color || COLORS[i % COLORS.length]}33` : undefined,
          width: 1.5,
          spanGaps: false,
          points: { show: false },
          value: (u, v) => this.format(v),
        })),
      ],
    };
    this.plot = new uPlot(options, this.data, this.plotEl);
  }

  resize() {
    if (!this.plotEl.isConnected || this.plotEl.clientWidth === 0) return;
    if (!this.plot) {
      this.make();
      return;
    }
    const width = Math.max(200, this.plotEl.clientWidth);
    if (width !== this.plot.width) this.plot.setSize({ width, height: this.height });
  }

  update(points) {
    this.data = [points.map((p) => p.t), ...this.series.map((s) => points.map((p) => {
      const v = s.value ? s.value(p) : p[s.key];
      return v === undefined ? null : v;
    }))];
    if (!this.plot) this.resize();
    else this.plot.setData(this.data);
  }
}

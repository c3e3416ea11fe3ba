// Figures of `npm run eval`: a Vega-Lite spec compiled to Vega and rendered to SVG in Node
// (vega.View.toSVG needs no canvas and no browser).
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const full = { width: 520, height: 300, ...spec, config: { font: 'sans-serif', legend: { labelLimit: 400 }, axisX: { labelAngle: 0 }, ...(spec as { config?: object }).config } } as TopLevelSpec;
  const view = new vega.View(vega.parse(compile(full).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

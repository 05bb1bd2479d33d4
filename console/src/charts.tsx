// Small SVG charts of our own (a few hundred bytes each instead of a charting library). Colours
// come from classes in style.css, never from inline styles, so they work under a strict CSP.

export type Series = { name: string; cls: string; points: { t: number; v: number }[] };

const W = 560;

/** Values over time; `max` fixes the top of the scale (e.g. the plan's limit). */
export function LineChart(props: { label: string; series: Series[]; max?: number; format: (v: number) => string; note?: string }) {
  const H = 160;
  const pad = { l: 8, r: 8, t: 12, b: 20 };
  const all = props.series.flatMap((s) => s.points);
  if (all.length === 0) {
    // No line, and why: Kapal never makes numbers up.
    const msg = props.note || 'no samples yet';
    return (
      <figure class="chart">
        <div class="chart-empty">{msg}</div>
        <figcaption>
          {props.label}
          {props.max ? `, limit ${props.format(props.max)}` : ''}
        </figcaption>
      </figure>
    );
  }
  const t0 = Math.min(...all.map((p) => p.t));
  const t1 = Math.max(...all.map((p) => p.t), t0 + 1);
  const top = Math.max(props.max ?? 0, ...all.map((p) => p.v), 1);
  const x = (t: number) => pad.l + ((t - t0) / (t1 - t0)) * (W - pad.l - pad.r);
  const y = (v: number) => pad.t + (1 - v / top) * (H - pad.t - pad.b);
  const last = props.series.map((s) => `${s.name} ${s.points.length ? props.format(s.points[s.points.length - 1].v) : 'none'}`);
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${props.label}: ${last.join(', ')}`}>
        <line class="axis" x1={pad.l} x2={W - pad.r} y1={y(0)} y2={y(0)} />
        {props.max !== undefined && (
          <>
            <line class="limit" x1={pad.l} x2={W - pad.r} y1={y(props.max)} y2={y(props.max)} />
            <text class="tick" x={W - pad.r} y={y(props.max) - 3} text-anchor="end">
              limit {props.format(props.max)}
            </text>
          </>
        )}
        {props.series.map((s) => (
          <g key={s.name}>
            {s.points.length === 1 ? (
              <circle class={`dot ${s.cls}`} cx={x(s.points[0].t)} cy={y(s.points[0].v)} r={3} />
            ) : (
              <polyline class={`line ${s.cls}`} points={s.points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ')} />
            )}
          </g>
        ))}
        <text class="tick" x={pad.l} y={H - 4}>
          {new Date(t0).toLocaleTimeString('en-GB')}
        </text>
        <text class="tick" x={W - pad.r} y={H - 4} text-anchor="end">
          {new Date(t1).toLocaleTimeString('en-GB')}
        </text>
      </svg>
      <figcaption>
        {props.label}:{' '}
        {props.series.map((s) => (
          <span key={s.name} class="legend">
            <span class={`swatch ${s.cls}`} aria-hidden="true" /> {s.name}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}

export type Bar = { label: string; values: { name: string; cls: string; v: number }[] };

/** Grouped vertical bars, one group per label. */
export function BarChart(props: { label: string; bars: Bar[]; format: (v: number) => string }) {
  const H = 200;
  const pad = { l: 8, r: 8, t: 16, b: 28 };
  if (props.bars.length === 0) return <p class="muted">{props.label}: nothing to show.</p>;
  const top = Math.max(1, ...props.bars.flatMap((b) => b.values.map((v) => v.v)));
  const gw = (W - pad.l - pad.r) / props.bars.length;
  const n = Math.max(1, ...props.bars.map((b) => b.values.length));
  const bw = Math.min(48, (gw * 0.8) / n);
  const y = (v: number) => pad.t + (1 - v / top) * (H - pad.t - pad.b);
  const names = props.bars[0].values.map((v) => ({ name: v.name, cls: v.cls }));
  const summary = props.bars.map((b) => `${b.label}: ${b.values.map((v) => `${v.name} ${props.format(v.v)}`).join(', ')}`).join('; ');
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${props.label}. ${summary}`}>
        <line class="axis" x1={pad.l} x2={W - pad.r} y1={y(0)} y2={y(0)} />
        {props.bars.map((b, i) => {
          const gx = pad.l + i * gw + (gw - bw * b.values.length) / 2;
          return (
            <g key={b.label}>
              {b.values.map((v, j) => (
                <rect key={v.name} class={`bar ${v.cls}`} x={gx + j * bw} y={y(v.v)} width={Math.max(1, bw - 2)} height={Math.max(0, y(0) - y(v.v))}>
                  <title>{`${b.label} ${v.name}: ${props.format(v.v)}`}</title>
                </rect>
              ))}
              <text class="tick" x={pad.l + i * gw + gw / 2} y={H - 10} text-anchor="middle">
                {b.label}
              </text>
            </g>
          );
        })}
        <text class="tick" x={pad.l} y={pad.t - 4}>
          {props.format(top)}
        </text>
      </svg>
      <figcaption>
        {props.label}:{' '}
        {names.map((s) => (
          <span key={s.name} class="legend">
            <span class={`swatch ${s.cls}`} aria-hidden="true" /> {s.name}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}

/**
 * Capacity of one resource: allocatable is the full width, the bars are what is used/committed,
 * and the ceiling is drawn as a line at `ceilingPercent` of allocatable.
 */
export function CapacityBar(props: {
  label: string;
  allocatable: number;
  rows: { name: string; cls: string; v: number }[];
  ceilingPercent?: number;
  format: (v: number) => string;
}) {
  const H = 14 + props.rows.length * 22;
  const left = 130;
  const span = W - left - 8;
  const top = Math.max(props.allocatable, ...props.rows.map((r) => r.v), 1);
  const x = (v: number) => left + (v / top) * span;
  const summary = props.rows.map((r) => `${r.name} ${props.format(r.v)}`).join(', ');
  const ceiling = props.ceilingPercent !== undefined ? (props.allocatable * props.ceilingPercent) / 100 : undefined;
  return (
    <figure class="chart">
      <svg
        viewBox={`0 0 ${W} ${H}`}
        role="img"
        aria-label={`${props.label}: allocatable ${props.format(props.allocatable)}, ${summary}${ceiling !== undefined ? `, ceiling ${props.ceilingPercent} % = ${props.format(ceiling)}` : ''}`}
      >
        <rect class="bar track" x={left} y={4} width={x(props.allocatable) - left} height={H - 8} />
        {props.rows.map((r, i) => (
          <g key={r.name}>
            <text class="tick" x={0} y={20 + i * 22}>
              {r.name}
            </text>
            <rect class={`bar ${r.cls}`} x={left} y={8 + i * 22} width={Math.max(0, x(r.v) - left)} height={16} />
          </g>
        ))}
        {ceiling !== undefined && <line class="ceiling" x1={x(ceiling)} x2={x(ceiling)} y1={0} y2={H} />}
      </svg>
      <figcaption>
        {props.label}: allocatable {props.format(props.allocatable)}
        {props.rows.map((r) => (
          <span key={r.name} class="legend">
            <span class={`swatch ${r.cls}`} aria-hidden="true" /> {r.name} {props.format(r.v)}
          </span>
        ))}
        {ceiling !== undefined && (
          <span class="legend">
            <span class="swatch ceiling" aria-hidden="true" /> ceiling {props.ceilingPercent} % ({props.format(ceiling)})
          </span>
        )}
      </figcaption>
    </figure>
  );
}

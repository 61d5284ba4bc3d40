// tidings/styles.js - the <tidings-bell>'s stylesheet, for its shadow root.
// Everything a host page may theme goes through the documented
// `--tidings-*` custom properties and `::part()` names; the `--_*`
// properties are internal. It must never style anything outside the
// shadow root (no selectors that could leak into the host page).

export const STYLE = `
:host {
  --_accent: var(--tidings-accent, #2563eb);
  --_bg: var(--tidings-bg, #ffffff);
  --_fg: var(--tidings-fg, #1f2328);
  --_muted: var(--tidings-muted, #656d76);
  --_border: var(--tidings-border, #d0d7de);
  --_unread-bg: var(--tidings-unread-bg, color-mix(in srgb, var(--_accent) 8%, var(--_bg)));
  --_badge-bg: var(--tidings-badge-bg, #dc2626);
  --_badge-fg: var(--tidings-badge-fg, #ffffff);
  --_problem-bg: var(--tidings-problem-bg, color-mix(in srgb, #dc2626 10%, var(--_bg)));
  --_link: var(--tidings-link, var(--_accent));
  --_radius: var(--tidings-radius, 10px);
  --_width: var(--tidings-width, 360px);
  --_max-height: var(--tidings-max-height, 420px);
  --_shadow: var(--tidings-shadow, 0 10px 30px rgb(0 0 0 / 0.15));
  display: inline-block;
  position: relative;
  font: var(--tidings-font, 14px/1.4 system-ui, sans-serif);
  color: var(--_fg);
}
@media (prefers-color-scheme: dark) {
  :host {
    --_bg: var(--tidings-bg, #1f2328);
    --_fg: var(--tidings-fg, #e6edf3);
    --_muted: var(--tidings-muted, #9198a1);
    --_border: var(--tidings-border, #3d444d);
    --_unread-bg: var(--tidings-unread-bg, color-mix(in srgb, var(--_accent) 16%, var(--_bg)));
    /* The accent itself is too dark to read on a dark background. */
    --_link: var(--tidings-link, color-mix(in srgb, var(--_accent) 55%, white));
  }
}
button { font: inherit; color: inherit; }
:focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }

.bell {
  position: relative; display: grid; place-items: center;
  width: 40px; height: 40px; padding: 0; border: 1px solid transparent;
  border-radius: 50%; background: transparent; cursor: pointer;
}
.bell:hover, .bell[aria-expanded="true"] { background: color-mix(in srgb, var(--_fg) 8%, transparent); }
.bell svg { width: 22px; height: 22px; fill: none; stroke: currentColor; stroke-width: 2; stroke-linecap: round; stroke-linejoin: round; }
.badge {
  position: absolute; top: 2px; right: 0; min-width: 18px; height: 18px; padding: 0 5px;
  box-sizing: border-box; border-radius: 9px; background: var(--_badge-bg); color: var(--_badge-fg);
  font-size: 11px; font-weight: 700; line-height: 18px; text-align: center;
}
.dot {
  position: absolute; bottom: 5px; right: 5px; width: 8px; height: 8px; border-radius: 50%;
  border: 2px solid var(--_bg); background: var(--_muted);
}
:host([status="live"]) .dot { background: #16a34a; }
:host([status="reconnecting"]) .dot, :host([status="connecting"]) .dot { background: #d97706; }
.panel {
  position: absolute; z-index: 1000; top: calc(100% + 6px); right: 0;
  width: min(var(--_width), calc(100vw - 16px)); box-sizing: border-box;
  background: var(--_bg); color: var(--_fg); border: 1px solid var(--_border);
  border-radius: var(--_radius); box-shadow: var(--_shadow); overflow: hidden;
}
:host([align="start"]) .panel { right: auto; left: 0; }
[hidden] { display: none !important; }
.header {
  display: flex; align-items: center; gap: 8px; padding: 10px 12px;
  border-bottom: 1px solid var(--_border);
}
.heading { font-weight: 600; margin: 0; font-size: 1em; flex: 1; }
.status { font-size: 12px; color: var(--_muted); white-space: nowrap; }
.status::before { content: "\\25CF\\00a0"; }
:host([status="live"]) .status::before { color: #16a34a; }
:host([status="reconnecting"]) .status::before, :host([status="connecting"]) .status::before { color: #d97706; }
.actions { display: flex; gap: 4px; padding: 6px 12px; border-bottom: 1px solid var(--_border); justify-content: flex-end; }
.action {
  border: 1px solid var(--_border); border-radius: 6px; background: transparent;
  padding: 2px 8px; font-size: 12px; cursor: pointer;
}
.action:hover:not(:disabled) { border-color: var(--_accent); color: var(--_accent); }
.action:disabled { opacity: 0.5; cursor: default; }
.scroller { max-height: min(var(--_max-height), 70dvh); overflow-y: auto; overscroll-behavior: contain; }
.list { list-style: none; margin: 0; padding: 0; }
.list li + li { border-top: 1px solid var(--_border); }
.row {
  position: relative; display: grid; grid-template-columns: 10px minmax(0, 1fr) auto; column-gap: 8px; row-gap: 2px;
  padding: 10px 12px;
}
.row:hover { background: color-mix(in srgb, var(--_fg) 5%, transparent); }
.row.unread { background: var(--_unread-bg); }
.row.unread::before {
  content: ""; grid-column: 1; grid-row: 1; width: 8px; height: 8px; margin-top: 6px; border-radius: 50%;
  background: var(--_accent);
}
.row.pending { opacity: 0.6; }
/* The ring goes on the row, inside it: the scrolling list would clip one
   drawn outside. */
.row:has(.item:focus-visible) { outline: 2px solid var(--_accent); outline-offset: -2px; }
.item:focus-visible { outline: none; }
.item {
  grid-column: 2; grid-row: 1; display: block; min-width: 0;
  padding: 0; border: 0; background: transparent; font: inherit; color: inherit;
  text-align: start; text-decoration: none; cursor: pointer;
}
/* The whole row answers a click on its link; its other controls sit above. */
.item::after { content: ""; position: absolute; inset: 0; }
.title { font-weight: 600; overflow-wrap: anywhere; }
.row:not(.unread) .title { font-weight: 500; }
.time { grid-column: 3; grid-row: 1; font-size: 12px; color: var(--_muted); white-space: nowrap; }
.body { grid-column: 2 / 4; margin: 0; color: var(--_muted); overflow-wrap: anywhere; }
.expand {
  grid-column: 2 / 4; justify-self: start; position: relative; z-index: 1;
  border: 0; padding: 0; background: transparent; color: var(--_link); font-size: 12px;
}
.expand:hover:not(:disabled) { text-decoration: underline; }
.kind { grid-column: 2 / 4; font-size: 11px; color: var(--_muted); font-family: ui-monospace, monospace; }
:host(:not([show-kind])) .kind { display: none; }
.empty, .loading { margin: 0; padding: 24px 12px; text-align: center; color: var(--_muted); }
.problem, .notice {
  margin: 0; padding: 8px 12px; border-bottom: 1px solid var(--_border);
  background: var(--_problem-bg); color: var(--_fg);
}
.problem { display: flex; align-items: center; gap: 8px; }
.problem-text { margin: 0; flex: 1; }
.retry { flex: none; }
.more {
  display: flex; flex-wrap: wrap; align-items: center; justify-content: center; gap: 8px;
  padding: 8px 12px; border-top: 1px solid var(--_border); font-size: 12px; color: var(--_muted);
}
.more:not(:has(> :not([hidden]))) { display: none; }
.beyond { font-weight: 600; color: var(--_fg); }
/* Fingers need bigger targets than a mouse pointer (WCAG 2.5.5: 44 px). */
@media (pointer: coarse) {
  .bell { width: 44px; height: 44px; }
  .action { min-height: 44px; padding: 0 14px; font-size: 14px; }
  .item { min-height: 44px; display: flex; align-items: center; }
}
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
`;

// MapView: a canvas scatter view of up to 70,000 labelled points with smooth pan and zoom,
// hover and click. Shared by the web explorer (dataset map) and the HTML report.
//
//   const view = new MapView(canvas, {x, y, labels, colours, unknownColour}, {
//       onHover(index, event),   // index -1 when the pointer leaves every point
//       onClick(index, event),
//   });
//   view.placeTooltip(element, index, event)  // in onHover: show a tooltip beside the pointer
// x, y: arrays of numbers (any range; the view fits them). labels: class per point (-1 unknown).
// colours: [[r, g, b], ...] per class. Drag to pan, wheel (or zoomBy) to zoom around the pointer.
// The canvas carries data-scale (current zoom, 1 = fit) and data-points for tests and tools.
'use strict';

class MapView {
    constructor(canvas, data, options = {}) {
        this.canvas = canvas;
        this.ctx = canvas.getContext('2d');
        this.options = options;
        this.n = data.x.length;
        this.x = Float32Array.from(data.x);
        this.y = Float32Array.from(data.y);
        this.labels = Int32Array.from(data.labels || new Array(this.n).fill(-1));
        this.pointRadius = options.pointRadius || 1.5;
        this.hoverIndex = -1;
        this.selected = -1;
        // Colours as packed RGBA words (little-endian byte order: ABGR), one per point.
        const packed = (c) => (255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0];
        const colours = (data.colours || []).map(packed);
        const unknown = packed(data.unknownColour || [150, 150, 150]);
        this.colour = new Uint32Array(this.n);
        for (let i = 0; i < this.n; i++) {
            const l = this.labels[i];
            this.colour[i] = l >= 0 && l < colours.length ? colours[l] >>> 0 : unknown >>> 0;
        }
        this._bounds();
        this._index();
        this.scale = 1;   // zoom relative to the fitted view
        this.cx = this.midX; // data point at the canvas centre
        this.cy = this.midY;
        this._frame = 0;
        this._bind();
        this.resize();
    }

    _bounds() {
        let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
        for (let i = 0; i < this.n; i++) {
            const x = this.x[i], y = this.y[i];
            if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
            if (x < x0) x0 = x;
            if (x > x1) x1 = x;
            if (y < y0) y0 = y;
            if (y > y1) y1 = y;
        }
        if (!(x1 >= x0)) { x0 = -1; x1 = 1; y0 = -1; y1 = 1; }
        const pad = 0.02 * Math.max(x1 - x0, y1 - y0, 1e-6);
        this.x0 = x0 - pad; this.x1 = x1 + pad; this.y0 = y0 - pad; this.y1 = y1 + pad;
        this.midX = (this.x0 + this.x1) / 2;
        this.midY = (this.y0 + this.y1) / 2;
    }

    // A uniform grid over the data for hit tests: cell -> point indices.
    _index() {
        const g = this.grid = 128;
        this.cellW = (this.x1 - this.x0) / g;
        this.cellH = (this.y1 - this.y0) / g;
        const counts = new Uint32Array(g * g + 1);
        const cellOf = new Int32Array(this.n);
        for (let i = 0; i < this.n; i++) {
            const cx = Math.min(g - 1, Math.max(0, Math.floor((this.x[i] - this.x0) / this.cellW)));
            const cy = Math.min(g - 1, Math.max(0, Math.floor((this.y[i] - this.y0) / this.cellH)));
            const c = Number.isFinite(cx + cy) ? cy * g + cx : -1;
            cellOf[i] = c;
            if (c >= 0) counts[c + 1]++;
        }
        for (let c = 0; c < g * g; c++) counts[c + 1] += counts[c];
        this.cellStart = counts;
        this.cellItems = new Int32Array(this.n);
        const fill = counts.slice(0, g * g);
        for (let i = 0; i < this.n; i++) if (cellOf[i] >= 0) this.cellItems[fill[cellOf[i]]++] = i;
    }

    // Data units -> CSS pixels: the fitted scale times the zoom.
    _unit() {
        const w = this.width, h = this.height;
        return Math.min(w / (this.x1 - this.x0), h / (this.y1 - this.y0)) * this.scale;
    }
    toScreen(x, y) {
        const u = this._unit();
        return [this.width / 2 + (x - this.cx) * u, this.height / 2 - (y - this.cy) * u];
    }
    toData(px, py) {
        const u = this._unit();
        return [this.cx + (px - this.width / 2) / u, this.cy - (py - this.height / 2) / u];
    }

    resize() {
        const rect = this.canvas.getBoundingClientRect();
        this.dpr = window.devicePixelRatio || 1;
        this.width = Math.max(50, rect.width);
        this.height = Math.max(50, rect.height);
        this.canvas.width = Math.round(this.width * this.dpr);
        this.canvas.height = Math.round(this.height * this.dpr);
        this.image = this.ctx.createImageData(this.canvas.width, this.canvas.height);
        this.pixels = new Uint32Array(this.image.data.buffer);
        this.draw();
    }

    // Schedules one redraw per animation frame.
    draw() {
        if (this._frame) return;
        this._frame = requestAnimationFrame(() => { this._frame = 0; this._drawNow(); });
    }

    _drawNow() {
        const W = this.canvas.width, H = this.canvas.height, px = this.pixels;
        px.fill(0xffffffff);
        const u = this._unit() * this.dpr;
        const ox = W / 2 - this.cx * u, oy = H / 2 + this.cy * u;
        // Points grow a little when zoomed in, so clusters stay readable at every zoom.
        const r = Math.max(1, Math.round(this.pointRadius * this.dpr * Math.min(3, Math.sqrt(this.scale))));
        for (let i = 0; i < this.n; i++) {
            const sx = Math.round(ox + this.x[i] * u), sy = Math.round(oy - this.y[i] * u);
            if (sx < -r || sy < -r || sx >= W + r || sy >= H + r) continue;
            const c = this.colour[i];
            const ya = Math.max(0, sy - r + 1), yb = Math.min(H - 1, sy + r - 1);
            const xa = Math.max(0, sx - r + 1), xb = Math.min(W - 1, sx + r - 1);
            for (let yy = ya; yy <= yb; yy++) {
                const row = yy * W;
                for (let xx = xa; xx <= xb; xx++) px[row + xx] = c;
            }
        }
        this.ctx.putImageData(this.image, 0, 0);
        for (const [i, colour] of [[this.selected, '#111'], [this.hoverIndex, '#e11']]) {
            if (i < 0) continue;
            const [sx, sy] = this.toScreen(this.x[i], this.y[i]);
            this.ctx.save();
            this.ctx.scale(this.dpr, this.dpr);
            this.ctx.strokeStyle = colour;
            this.ctx.lineWidth = 2;
            this.ctx.beginPath();
            this.ctx.arc(sx, sy, 6, 0, 2 * Math.PI);
            this.ctx.stroke();
            this.ctx.restore();
        }
        this.canvas.dataset.scale = this.scale.toFixed(4);
        this.canvas.dataset.points = String(this.n);
    }

    // The point nearest to CSS pixel (px, py) within `radius` pixels, or -1.
    pick(px, py, radius = 8) {
        const [dx, dy] = this.toData(px, py);
        const u = this._unit();
        const rd = radius / u;
        const g = this.grid;
        const cxa = Math.max(0, Math.floor((dx - rd - this.x0) / this.cellW));
        const cxb = Math.min(g - 1, Math.floor((dx + rd - this.x0) / this.cellW));
        const cya = Math.max(0, Math.floor((dy - rd - this.y0) / this.cellH));
        const cyb = Math.min(g - 1, Math.floor((dy + rd - this.y0) / this.cellH));
        let best = -1, bestD = rd * rd;
        for (let cy = cya; cy <= cyb; cy++) {
            for (let cx = cxa; cx <= cxb; cx++) {
                const c = cy * g + cx;
                for (let k = this.cellStart[c]; k < this.cellStart[c + 1]; k++) {
                    const i = this.cellItems[k];
                    const ex = this.x[i] - dx, ey = this.y[i] - dy;
                    const d = ex * ex + ey * ey;
                    if (d <= bestD) { bestD = d; best = i; }
                }
            }
        }
        return best;
    }

    // Zooms by `factor` keeping the data point under CSS pixel (px, py) in place.
    zoomBy(factor, px = this.width / 2, py = this.height / 2) {
        const [dx, dy] = this.toData(px, py);
        this.scale = Math.min(2000, Math.max(0.2, this.scale * factor));
        const u = this._unit();
        this.cx = dx - (px - this.width / 2) / u;
        this.cy = dy + (py - this.height / 2) / u;
        this.draw();
    }

    // Centres on point i at the given zoom.
    focus(i, scale = this.scale) {
        this.scale = scale;
        this.cx = this.x[i];
        this.cy = this.y[i];
        this.draw();
    }

    reset() {
        this.scale = 1;
        this.cx = this.midX;
        this.cy = this.midY;
        this.draw();
    }

    select(i) {
        this.selected = i;
        this.draw();
    }

    _bind() {
        const c = this.canvas;
        let drag = null;
        const local = (e) => {
            const r = c.getBoundingClientRect();
            return [e.clientX - r.left, e.clientY - r.top];
        };
        c.addEventListener('wheel', (e) => {
            e.preventDefault();
            const [px, py] = local(e);
            this.zoomBy(Math.exp(-e.deltaY * 0.0015), px, py);
        }, { passive: false });
        c.addEventListener('pointerdown', (e) => {
            const [px, py] = local(e);
            drag = { px, py, cx: this.cx, cy: this.cy, moved: false };
            c.setPointerCapture(e.pointerId);
        });
        c.addEventListener('pointermove', (e) => {
            const [px, py] = local(e);
            if (drag) {
                const u = this._unit();
                if (Math.abs(px - drag.px) + Math.abs(py - drag.py) > 3) drag.moved = true;
                if (drag.moved) {
                    this.cx = drag.cx - (px - drag.px) / u;
                    this.cy = drag.cy + (py - drag.py) / u;
                    this.draw();
                }
                return;
            }
            const i = this.pick(px, py);
            if (i !== this.hoverIndex) {
                this.hoverIndex = i;
                this.draw();
            }
            if (this.options.onHover) this.options.onHover(i, e);
        });
        c.addEventListener('pointerup', (e) => {
            const d = drag;
            drag = null;
            if (d && !d.moved) {
                const [px, py] = local(e);
                const i = this.pick(px, py);
                if (i >= 0) {
                    this.select(i);
                    if (this.options.onClick) this.options.onClick(i, e);
                }
            }
        });
        c.addEventListener('pointerleave', (e) => {
            if (this.hoverIndex !== -1) {
                this.hoverIndex = -1;
                this.draw();
            }
            if (this.options.onHover) this.options.onHover(-1, e);
        });
        if (window.ResizeObserver) new ResizeObserver(() => this.resize()).observe(c);
    }

    // For onHover: hides the tooltip el when index < 0 (returns false), else places it beside
    // the pointer inside the canvas (el is positioned absolutely over the canvas's parent).
    placeTooltip(el, index, e) {
        if (index < 0) {
            el.hidden = true;
            return false;
        }
        const r = this.canvas.getBoundingClientRect();
        el.hidden = false;
        el.style.left = `${Math.min(e.clientX - r.left + 14, r.width - 100)}px`;
        el.style.top = `${Math.max(0, e.clientY - r.top - 100)}px`;
        return true;
    }
}

if (typeof window !== 'undefined') window.MapView = MapView;

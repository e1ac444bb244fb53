// MapView: a canvas scatter view of labelled points, from a handful to millions, with smooth pan
// and zoom, and exact hover and click. Shared by the web explorer (dataset map) and the report.
//
//   const view = new MapView(canvas, {x, y, labels, colours, unknownColour}, {
//       onHover(index, event),   // index -1 when the pointer leaves every point
//       onClick(index, event),
//   });
//   view.placeTooltip(element, index, event)  // in onHover: show a tooltip beside the pointer
// x, y: numbers per point (arrays or Float32Array, any range; the view fits them). labels: class
// per point (-1 unknown; arrays or Int32Array). colours: [[r, g, b], ...] per class. Drag to pan,
// wheel (or zoomBy) to zoom around the pointer. The canvas carries data-scale (current zoom,
// 1 = fit), data-points and data-draw-ms (the last frame's drawing time) for tests and tools.
//
// Level of detail: the points are sorted in Z-order over a 2^L x 2^L grid laid on the data, so
// every node of the implied quadtree is one contiguous run of sorted points (its bounds come from
// the finest grid's prefix counts). A frame picks the level whose cells are about one point across
// and draws one point (the middle of the run) per visible non-empty cell; once the finest cells
// are larger than a point it draws every point of the visible cells. A frame therefore costs about
// the number of point-sized cells on the screen, not the number of points. Hover and click search
// the finest cells around the pointer over all points, so they are exact at every zoom.
'use strict';

class MapView {
    constructor(canvas, data, options = {}) {
        this.canvas = canvas;
        this.ctx = canvas.getContext('2d');
        this.options = options;
        this.n = data.x.length;
        this.x = data.x instanceof Float32Array ? data.x : Float32Array.from(data.x);
        this.y = data.y instanceof Float32Array ? data.y : Float32Array.from(data.y);
        const labels = data.labels || new Int32Array(this.n).fill(-1);
        this.labels = labels instanceof Int32Array ? labels : Int32Array.from(labels);
        this.pointRadius = options.pointRadius || 1.5;
        this.hoverIndex = -1;
        this.selected = -1;
        this.drawTimes = [];  // the last 512 frames' drawing times in ms
        // Colours as packed RGBA words (little-endian byte order: ABGR).
        const packed = (c) => ((255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0]) >>> 0;
        this.classColour = Uint32Array.from((data.colours || []).map(packed));
        this.unknownColour = packed(data.unknownColour || [150, 150, 150]);
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

    // The Z-order index: finest grid 2^L cells a side (about one point per cell, at most 2^11).
    _index() {
        const L = this.L = Math.max(1, Math.min(11, Math.ceil(Math.log2(Math.sqrt(Math.max(1, this.n))))));
        const G = 1 << L, cells = G * G;
        this.side = Math.max(this.x1 - this.x0, this.y1 - this.y0);  // the grid is square
        const spread = this.spread = new Uint32Array(G);  // bits of v moved to the even positions
        for (let v = 0; v < G; v++) {
            let s = 0;
            for (let b = 0; b < L; b++) s |= ((v >> b) & 1) << (2 * b);
            spread[v] = s;
        }
        const k = G / this.side;
        const code = new Uint32Array(this.n);
        const start = new Uint32Array(cells + 1);
        let valid = 0;
        for (let i = 0; i < this.n; i++) {
            const fx = Math.floor((this.x[i] - this.x0) * k), fy = Math.floor((this.y[i] - this.y0) * k);
            if (!(fx >= -1 && fy >= -1 && fx <= G && fy <= G)) { code[i] = 0xffffffff; continue; } // NaN
            const c = spread[Math.min(G - 1, Math.max(0, fx))] | (spread[Math.min(G - 1, Math.max(0, fy))] << 1);
            code[i] = c;
            start[c + 1]++;
            valid++;
        }
        for (let c = 0; c < cells; c++) start[c + 1] += start[c];
        this.cellStart = start;
        // Points sorted by cell: coordinates, colour and the original index side by side.
        const order = this.order = new Int32Array(valid);
        const sx = this.sx = new Float32Array(valid), sy = this.sy = new Float32Array(valid);
        const col = this.scol = new Uint32Array(valid);
        const fill = start.slice(0, cells);
        for (let i = 0; i < this.n; i++) {
            const c = code[i];
            if (c === 0xffffffff) continue;
            const at = fill[c]++;
            order[at] = i;
            sx[at] = this.x[i];
            sy[at] = this.y[i];
            col[at] = this._colourOf(this.labels[i]);
        }
    }

    _colourOf(label) {
        return label >= 0 && label < this.classColour.length ? this.classColour[label] : this.unknownColour;
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
        const t0 = performance.now();
        const W = this.canvas.width, H = this.canvas.height, px = this.pixels;
        px.fill(0xffffffff);
        const u = this._unit() * this.dpr;
        const ox = W / 2 - this.cx * u, oy = H / 2 + this.cy * u;
        // Points grow a little when zoomed in, so clusters stay readable at every zoom.
        const r = Math.max(1, Math.round(this.pointRadius * this.dpr * Math.min(3, Math.sqrt(this.scale))));
        const sx = this.sx, sy = this.sy, col = this.scol, start = this.cellStart, spread = this.spread;
        const plot = (k) => {
            const x = Math.round(ox + sx[k] * u), y = Math.round(oy - sy[k] * u);
            if (x < -r || y < -r || x >= W + r || y >= H + r) return;
            const c = col[k];
            const ya = Math.max(0, y - r + 1), yb = Math.min(H - 1, y + r - 1);
            const xa = Math.max(0, x - r + 1), xb = Math.min(W - 1, x + r - 1);
            for (let yy = ya; yy <= yb; yy++) {
                const row = yy * W;
                for (let xx = xa; xx <= xb; xx++) px[row + xx] = c;
            }
        };
        // The level whose cells are at most one point across (device pixels).
        const L = this.L, pointPx = 2 * r - 1;
        const level = Math.max(0, Math.ceil(Math.log2(this.side * u / pointPx)));
        const l = Math.min(level, L), shift = 2 * (L - l), span = 2 ** shift;
        const cell = this.side / (1 << l);
        // The visible data window (a point's radius beyond the edges) in cells of level l.
        const last = (1 << l) - 1;
        const ixa = Math.max(0, Math.floor(((-r - ox) / u - this.x0) / cell));
        const ixb = Math.min(last, Math.floor(((W + r - ox) / u - this.x0) / cell));
        const iya = Math.max(0, Math.floor(((oy - H - r) / u - this.y0) / cell));
        const iyb = Math.min(last, Math.floor(((oy + r) / u - this.y0) / cell));
        const every = level > L;  // the finest cells are larger than a point: draw them all
        for (let iy = iya; iy <= iyb; iy++) {
            const ys = spread[iy] << 1;
            for (let ix = ixa; ix <= ixb; ix++) {
                const c = ((spread[ix] | ys) >>> 0) * span;
                const a = start[c], b = start[c + span];
                if (b === a) continue;
                if (every) for (let k = a; k < b; k++) plot(k);
                else plot((a + b) >>> 1);
            }
        }
        this.ctx.putImageData(this.image, 0, 0);
        for (const [i, colour] of [[this.selected, '#111'], [this.hoverIndex, '#e11']]) {
            if (i < 0) continue;
            const [qx, qy] = this.toScreen(this.x[i], this.y[i]);
            this.ctx.save();
            this.ctx.scale(this.dpr, this.dpr);
            this.ctx.strokeStyle = colour;
            this.ctx.lineWidth = 2;
            this.ctx.beginPath();
            this.ctx.arc(qx, qy, 6, 0, 2 * Math.PI);
            this.ctx.stroke();
            this.ctx.restore();
        }
        const ms = performance.now() - t0;
        if (this.drawTimes.length >= 512) this.drawTimes.shift();
        this.drawTimes.push(ms);
        this.canvas.dataset.drawMs = ms.toFixed(2);
        this.canvas.dataset.scale = this.scale.toFixed(4);
        this.canvas.dataset.points = String(this.n);
    }

    // The point nearest to CSS pixel (px, py) within `radius` pixels, or -1 (over all points).
    pick(px, py, radius = 8) {
        const [dx, dy] = this.toData(px, py);
        const rd = radius / this._unit();
        const G = 1 << this.L, cell = this.side / G;
        const cxa = Math.max(0, Math.floor((dx - rd - this.x0) / cell));
        const cxb = Math.min(G - 1, Math.floor((dx + rd - this.x0) / cell));
        const cya = Math.max(0, Math.floor((dy - rd - this.y0) / cell));
        const cyb = Math.min(G - 1, Math.floor((dy + rd - this.y0) / cell));
        let best = -1, bestD = rd * rd;
        for (let cy = cya; cy <= cyb; cy++) {
            for (let cx = cxa; cx <= cxb; cx++) {
                const c = (this.spread[cx] | (this.spread[cy] << 1)) >>> 0;
                for (let k = this.cellStart[c]; k < this.cellStart[c + 1]; k++) {
                    const ex = this.sx[k] - dx, ey = this.sy[k] - dy;
                    const d = ex * ex + ey * ey;
                    // Ties go to the lower index, so the answer does not depend on the order.
                    if (d < bestD || (d === bestD && best >= 0 && this.order[k] < best)) { bestD = d; best = this.order[k]; }
                }
            }
        }
        return best;
    }

    // Zooms by `factor` keeping the data point under CSS pixel (px, py) in place.
    zoomBy(factor, px = this.width / 2, py = this.height / 2) {
        const [dx, dy] = this.toData(px, py);
        this.scale = Math.min(20000, Math.max(0.2, this.scale * factor));
        const u = this._unit();
        this.cx = dx - (px - this.width / 2) / u;
        this.cy = dy + (py - this.height / 2) / u;
        this.draw();
    }

    // Moves the view by (dx, dy) CSS pixels.
    panBy(dx, dy) {
        const u = this._unit();
        this.cx -= dx / u;
        this.cy += dy / u;
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

// The binary points of /api/map/points (and the report's map file): float32 x[n], float32 y[n],
// int32 labels[n], int32 items[n], little-endian; typed arrays over the buffer, no copies.
MapView.unpack = (buffer, n) => {
    if (buffer.byteLength !== 16 * n) throw new Error(`the map's points hold ${buffer.byteLength} bytes, expected ${16 * n}`);
    return {
        x: new Float32Array(buffer, 0, n), y: new Float32Array(buffer, 4 * n, n),
        labels: new Int32Array(buffer, 8 * n, n), items: new Int32Array(buffer, 12 * n, n),
    };
};

if (typeof window !== 'undefined') window.MapView = MapView;

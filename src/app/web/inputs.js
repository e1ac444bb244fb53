// convscope explorer, the inputs: the dataset gallery, uploads and the drawing canvas.
// Loaded before app.js, which holds the shared state and helpers and starts the app.
'use strict';

// --- inputs ----------------------------------------------------------------------------------

function setupDrawing() {
    const canvas = $('draw');
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const [, H, W] = state.model.input_shape;
    const small = document.createElement('canvas');
    small.width = W; small.height = H;
    const sctx = small.getContext('2d', { willReadFrequently: true });

    const pos = (e) => {
        const r = canvas.getBoundingClientRect();
        return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
    };
    const send = () => {
        sctx.imageSmoothingEnabled = true;
        sctx.imageSmoothingQuality = 'high';
        sctx.clearRect(0, 0, W, H);
        sctx.drawImage(canvas, 0, 0, W, H);
        const rgba = sctx.getImageData(0, 0, W, H).data;
        const gray = new Uint8Array(W * H);
        for (let i = 0; i < W * H; i++) gray[i] = rgba[4 * i];
        liveUpdate(JSON.stringify({ gray: base64Of(gray), width: W, height: H }));
    };
    const stroke = (from, to) => {
        ctx.strokeStyle = '#fff';
        ctx.lineCap = 'round';
        ctx.lineJoin = 'round';
        ctx.lineWidth = parseFloat($('brush').value) * canvas.width / W;
        ctx.beginPath();
        ctx.moveTo(from[0], from[1]);
        ctx.lineTo(to[0], to[1]);
        ctx.stroke();
    };
    canvas.addEventListener('pointerdown', (e) => {
        canvas.setPointerCapture(e.pointerId);
        state.drawing = true;
        state.lastPoint = pos(e);
        stroke(state.lastPoint, state.lastPoint);
        send();
    });
    canvas.addEventListener('pointermove', (e) => {
        if (!state.drawing) return;
        const p = pos(e);
        stroke(state.lastPoint, p);
        state.lastPoint = p;
        send();
    });
    const end = () => { if (state.drawing) { state.drawing = false; send(); } };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);
    $('clear').addEventListener('click', () => {
        ctx.fillStyle = '#000';
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        send();
    });
}

// Shows a picture of the current input in the drawing canvas, so one can draw over it.
function showInDrawing(src) {
    const canvas = $('draw');
    const img = new Image();
    img.onload = () => {
        const ctx = canvas.getContext('2d');
        ctx.imageSmoothingEnabled = false;
        ctx.fillStyle = '#000';
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    };
    img.src = src;
}

function selectItem(index) {
    const n = state.dataset.size;
    if (!(index >= 0 && index < n)) { status(`item ${index} does not exist (0..${n - 1})`, true); return; }
    $('item-index').value = index;
    liveUpdate(JSON.stringify({ index }));
    if (state.model.drawable) showInDrawing(`/api/items/${index}.png`);
    const start = Math.floor(index / state.gallerySize) * state.gallerySize;
    if (start !== state.galleryStart) loadGallery(start);
    for (const img of $('gallery').querySelectorAll('img')) img.classList.toggle('current', Number(img.dataset.index) === index);
}

async function loadGallery(start) {
    const n = state.dataset.size;
    start = Math.max(0, Math.min(start, n - 1));
    state.galleryStart = start;
    const items = await api(`/api/items?start=${start}&count=${state.gallerySize}`);
    const imgs = items.map((it) => {
        const img = el('img', { src: `/api/items/${it.index}.png`, alt: `item ${it.index}`, title: `#${it.index} ${it.label >= 0 ? it.label_name : ''}`, 'data-index': String(it.index) });
        img.addEventListener('click', () => selectItem(it.index));
        return img;
    });
    $('gallery').replaceChildren(...imgs);
}

function setupInputs() {
    $('page-prev').addEventListener('click', () => loadGallery(state.galleryStart - state.gallerySize));
    $('page-next').addEventListener('click', () => loadGallery(state.galleryStart + state.gallerySize));
    $('item-go').addEventListener('click', () => selectItem(Number($('item-index').value)));
    $('item-index').addEventListener('keydown', (e) => { if (e.key === 'Enter') selectItem(Number($('item-index').value)); });
    $('upload').addEventListener('change', async (e) => {
        const file = e.target.files[0];
        if (!file) return;
        const bytes = await file.arrayBuffer();
        liveUpdate(bytes, file.type && file.type.startsWith('image/') ? file.type : 'application/octet-stream');
        e.target.value = '';
        // The drawing canvas shows what the model sees once the update arrives.
        if (state.model.drawable) {
            const waitFor = state.seq + 1;
            const poll = setInterval(() => {
                if (state.applied >= waitFor) { clearInterval(poll); showInDrawing(`/api/images/${state.image}.png`); }
            }, 50);
            setTimeout(() => clearInterval(poll), 10000);
        }
    });
}

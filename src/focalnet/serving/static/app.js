// focalnet serve's page: plain JavaScript, no dependencies, talking only to the server it came from.
// Each image becomes a card; what the card shows depends on the model's task (GET /model).

const KEY_STORAGE = "focalnet-api-key";
const IMAGE_FILE = /\.(jpe?g|png|gif|bmp|webp|tiff?|ppm|pgm)$/i;
// Sasha Trubetskoy's distinct colours, as `focalnet predict` draws detections (label i: PALETTE[i % 12])
const PALETTE = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
];

const page = {
  info: null,
  key: sessionStorage.getItem(KEY_STORAGE),
  keyPrompt: null,
  ready: null,
};

// ------------------------------------------------------------------------------------------------
// the server
class ServerError extends Error {
  constructor(status, code, message, retryable) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryable = retryable;
  }
}

async function request(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    if (page.key) headers.set("Authorization", `Bearer ${page.key}`);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch {
      throw new ServerError(0, "unreachable", "The server cannot be reached.", true);
    }
    if (response.status === 401) {
      const message = page.key ? "That key was refused. Enter the right one." : "This server asks for an API key.";
      if (await askForKey(message)) continue;
      throw new ServerError(401, "unauthorized", "An API key is needed to use this server.", true);
    }
    if (!response.ok) throw await serverError(response);
    return response;
  }
}

async function serverError(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    code = body.error.code;
    message = body.error.message;
  } catch {
    // not our JSON error: keep the status line
  }
  const retryable = [0, 500, 503, 504].includes(response.status);
  return new ServerError(response.status, code, message, retryable);
}

function askForKey(message) {
  if (page.keyPrompt) return page.keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-message").textContent = message;
  input.value = "";
  page.keyPrompt = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        page.keyPrompt = null;
        const key = input.value.trim();
        if (dialog.returnValue === "ok" && key) {
          page.key = key;
          sessionStorage.setItem(KEY_STORAGE, key);
          resolve(true);
        } else {
          resolve(false);
        }
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
  });
  return page.keyPrompt;
}

function bodyOf(file) {
  return { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } };
}

async function predict(file, params) {
  const response = await request(`predict?${new URLSearchParams(params)}`, bodyOf(file));
  return response.json();
}

async function visualize(file, params) {
  const response = await request(`visualize?${new URLSearchParams(params)}`, bodyOf(file));
  return response.blob();
}

// ------------------------------------------------------------------------------------------------
// the model
async function loadModel() {
  const line = document.getElementById("model");
  for (;;) {
    try {
      page.info = await (await request("model")).json();
      break;
    } catch (error) {
      if (error.status === 503 || error.status === 0) {
        line.textContent = "The model is loading…";
        await sleep(2000);
        continue;
      }
      line.textContent = `The model cannot be described: ${error.message}`;
      throw error;
    }
  }
  const info = page.info;
  const size = info.input_size ? `${info.input_size[0]}×${info.input_size[1]} px` : "any size";
  const labels = info.num_labels ? ` · ${info.num_labels} labels` : "";
  line.replaceChildren(
    strong(info.task), ` · ${info.model_class || info.name}${labels} · input ${size} · ${info.device} (${info.dtype})`,
  );
  document.title = `${info.name} · focalnet serve`;
}

// ------------------------------------------------------------------------------------------------
// small helpers
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function element(tag, properties = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(properties)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

const strong = (text) => element("strong", { textContent: text });

function debounce(action, ms = 200) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(action, ms);
  };
}

let controlCount = 0;

function slider(label, value, min, max, step, format) {
  const id = `control-${++controlCount}`;
  const input = element("input", { type: "range", id, min, max, step, value });
  const shown = element("span", { className: "value", textContent: format(value) });
  input.addEventListener("input", () => (shown.textContent = format(input.value)));
  const wrapper = element("div", { className: "control" }, element("label", { htmlFor: id }, `${label}: `, shown), input);
  return { wrapper, input };
}

function loadImage(source) {
  const url = source instanceof Blob ? URL.createObjectURL(source) : source;
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new ServerError(0, "bad_image", "The browser cannot show this image.", false));
    image.src = url;
  });
}

/** A mask PNG (0/255, base64) as a canvas of `colour` where the mask is set, and its pixels. */
async function tintedMask(base64, colour) {
  const mask = await loadImage(`data:image/png;base64,${base64}`);
  const canvas = element("canvas", { width: mask.naturalWidth, height: mask.naturalHeight });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(mask, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const inside = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < inside.length; i++) {
    inside[i] = pixels.data[4 * i] > 127 ? 1 : 0;
    pixels.data.set([...colour, inside[i] ? 255 : 0], 4 * i);
  }
  context.putImageData(pixels, 0, 0);
  return { canvas, inside, width: canvas.width };
}

/** The PASCAL VOC colour map, as `focalnet predict` colours segmentation labels. */
function vocColour(label) {
  let [red, green, blue] = [0, 0, 0];
  for (let shift = 7; shift >= 0; shift--) {
    red |= (label & 1) << shift;
    green |= ((label >> 1) & 1) << shift;
    blue |= ((label >> 2) & 1) << shift;
    label >>= 3;
  }
  return [red, green, blue];
}

const rgb = (colour) => `rgb(${colour.join(",")})`;

function download(blob, name) {
  const link = element("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

// ------------------------------------------------------------------------------------------------
// cards
class Card {
  constructor(file) {
    this.file = file;
    this.node = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
    this.node.querySelector(".card-title").textContent = file.name || "pasted image";
    this.picture = this.node.querySelector(".picture");
    this.details = this.node.querySelector(".details");
    this.error = this.node.querySelector(".error");
    this.retry = this.node.querySelector(".retry");
    this.json = null;
    this.png = null;
    this.retry.addEventListener("click", () => this.run());
    this.node.querySelector(".download-json").addEventListener("click", () => this.downloadJson());
    this.node.querySelector(".download-png").addEventListener("click", () => this.downloadPng());
    document.getElementById("cards").append(this.node);
    document.getElementById("clear").hidden = false;
    this.run();
  }

  get stem() {
    return (this.file.name || "image").replace(/\.[^.]*$/, "");
  }

  setState(state, text = state) {
    this.node.dataset.state = state;
    this.node.querySelector(".badge").textContent = text;
  }

  async run() {
    this.picture.replaceChildren();
    this.details.replaceChildren();
    this.error.hidden = true;
    this.retry.hidden = true;
    if (!(this.file.type.startsWith("image/") || IMAGE_FILE.test(this.file.name))) {
      const kind = this.file.type || "an unknown type";
      this.fail(new ServerError(0, "not_an_image", `${this.file.name} is not an image (${kind}): choose a JPEG, PNG, GIF, BMP, WebP or TIFF file.`, false));
      return;
    }
    this.setState("waiting", "working…");
    try {
      await page.ready;
      this.node.dataset.task = page.info.task;
      await (RENDERERS[page.info.task] || unknownTask)(this);
      this.setState("done");
      this.node.querySelector(".download-json").disabled = this.json === null;
      this.node.querySelector(".download-png").disabled = false;
    } catch (error) {
      this.fail(error);
    }
  }

  fail(error) {
    this.setState("error");
    this.error.textContent = describeError(error);
    this.error.hidden = false;
    this.retry.hidden = !error.retryable;
  }

  downloadJson() {
    download(new Blob([JSON.stringify(this.json, null, 2)], { type: "application/json" }), `${this.stem}.json`);
  }

  async downloadPng() {
    const blob = this.png || (await new Promise((resolve) => this.canvas.toBlob(resolve, "image/png")));
    download(blob, `${this.stem}.png`);
  }
}

function describeError(error) {
  if (!(error instanceof ServerError)) return `Something went wrong in the page: ${error.message}`;
  switch (error.status) {
    case 0:
      return error.message;
    case 400:
      return `The server cannot read this image: ${error.message}`;
    case 413:
      return `Too large: ${error.message}`;
    case 415:
      return `Not accepted: ${error.message}`;
    case 422:
      return `A setting was refused: ${error.message}`;
    case 503:
      return `The server is busy or not ready (${error.message}). Try again in a moment.`;
    case 504:
      return `The server took too long (${error.message}). Try again in a moment.`;
    case 500:
      return `The model failed on this image: ${error.message}`;
    default:
      return `The server answered ${error.status}: ${error.message}`;
  }
}

async function unknownTask(card) {
  throw new ServerError(0, "unknown_task", `This page cannot show answers of a ${page.info.task} model.`, false);
}

// ------------------------------------------------------------------------------------------------
// one renderer per task
async function classification(card) {
  card.json = await predict(card.file, { top_k: Math.min(5, page.info.num_labels) });
  const list = element("ol", { className: "labels", "aria-label": "Top labels" });
  for (const { label, score } of card.json) {
    const bar = element("span", { style: `width: ${(100 * score).toFixed(1)}%` });
    list.append(
      element(
        "li",
        { dataset: { label, score: String(score) } },
        element("span", { className: "name", textContent: label }),
        element("span", { className: "score", textContent: `${(100 * score).toFixed(1)}%` }),
        element("span", { className: "bar", "aria-hidden": "true" }, bar),
      ),
    );
  }
  card.details.append(list);
  if (!page.info.blocks) {
    card.details.append(element("p", { className: "note", textContent: "This model has no modulators to draw." }));
    card.picture.append(element("img", { src: URL.createObjectURL(card.file), alt: card.file.name }));
    card.png = card.file;
    return;
  }
  const id = `control-${++controlCount}`;
  const blocks = element("select", { id });
  blocks.append(
    element("option", { value: "last", textContent: "last block of each stage" }),
    element("option", { value: "all", textContent: "every block" }),
    ...page.info.blocks.map((title, index) => element("option", { value: String(index), textContent: title })),
  );
  const opacity = slider("Heat-map opacity", 0.5, 0, 1, 0.05, (v) => Number(v).toFixed(2));
  card.details.append(
    element("div", { className: "control" }, element("label", { htmlFor: id, textContent: "Modulators of" }), blocks),
    opacity.wrapper,
  );
  const picture = element("img", { alt: `Modulator maps and gates of ${card.file.name}` });
  card.picture.append(picture);
  const draw = async () => {
    try {
      card.png = await visualize(card.file, { blocks: blocks.value, alpha: opacity.input.value, top_k: 3 });
      picture.src = URL.createObjectURL(card.png);
      await picture.decode();
    } catch (error) {
      card.fail(error);
    }
  };
  blocks.addEventListener("change", draw);
  opacity.input.addEventListener("input", debounce(draw));
  await draw();
}

async function detection(card) {
  card.json = await predict(card.file, { threshold: 0 });
  const image = await loadImage(card.file);
  const canvas = element("canvas", { width: image.naturalWidth, height: image.naturalHeight });
  canvas.setAttribute("aria-label", `Detections on ${card.file.name}`);
  card.canvas = canvas;
  card.picture.append(canvas);
  const colours = card.json.map((found) => PALETTE[Math.max(0, page.info.labels.indexOf(found.label)) % PALETTE.length]);
  const masks = await Promise.all(
    card.json.map((found, index) => (found.mask ? tintedMask(found.mask, colours[index]) : null)),
  );
  const threshold = slider("Lowest score shown", page.info.settings.threshold, 0, 1, 0.01, (v) => Number(v).toFixed(2));
  const count = element("p", { className: "note count", "aria-live": "polite" });
  card.details.append(threshold.wrapper, count);
  let maskOpacity = null;
  if (masks.some(Boolean)) {
    maskOpacity = slider("Mask opacity", 0.45, 0, 1, 0.05, (v) => Number(v).toFixed(2));
    card.details.append(maskOpacity.wrapper);
  }
  const context = canvas.getContext("2d");
  const line = Math.max(1, Math.round(Math.max(canvas.width, canvas.height) / 320));
  const fontSize = Math.max(12, Math.round(Math.max(canvas.width, canvas.height) / 40));
  const render = () => {
    const lowest = Number(threshold.input.value);
    context.drawImage(image, 0, 0);
    let drawn = 0;
    card.json.forEach((found, index) => {
      if (found.score < lowest) return;
      drawn++;
      if (masks[index]) {
        context.globalAlpha = Number(maskOpacity.input.value);
        context.drawImage(masks[index].canvas, 0, 0);
        context.globalAlpha = 1;
      }
      const { xmin, ymin, xmax, ymax } = found.box;
      context.strokeStyle = rgb(colours[index]);
      context.lineWidth = line;
      context.strokeRect(xmin, ymin, xmax - xmin, ymax - ymin);
      const caption = `${found.label} ${found.score.toFixed(2)}`;
      context.font = `${fontSize}px system-ui, sans-serif`;
      const width = context.measureText(caption).width + 6;
      const top = ymin - fontSize - 4 >= 0 ? ymin - fontSize - 4 : ymin;
      context.fillStyle = rgb(colours[index]);
      context.fillRect(xmin, top, width, fontSize + 4);
      context.fillStyle = "#000";
      context.fillText(caption, xmin + 3, top + fontSize);
    });
    count.dataset.drawn = String(drawn);
    count.dataset.total = String(card.json.length);
    count.textContent = `${drawn} of ${card.json.length} detections with a score of at least ${lowest.toFixed(2)}`;
  };
  threshold.input.addEventListener("input", render);
  if (maskOpacity) maskOpacity.input.addEventListener("input", render);
  render();
}

async function segmentation(card) {
  card.json = await predict(card.file, { label_map: true });
  const image = await loadImage(card.file);
  const canvas = element("canvas", { width: image.naturalWidth, height: image.naturalHeight });
  canvas.setAttribute("aria-label", `Segmentation of ${card.file.name}`);
  card.canvas = canvas;
  card.picture.append(canvas);
  const segments = card.json.segments;
  const indices = segments.map((segment) => Math.max(0, page.info.labels.indexOf(segment.label)));
  const masks = await Promise.all(segments.map((segment, i) => tintedMask(segment.mask, vocColour(indices[i]))));
  const legend = element("ul", { className: "legend", "aria-label": "Classes present" });
  segments.forEach((segment, i) => {
    const swatch = element("span", { className: "swatch", style: `background: ${rgb(vocColour(indices[i]))}` });
    legend.append(element("li", { dataset: { label: segment.label } }, swatch, segment.label));
  });
  const opacity = slider("Overlay opacity", 0.5, 0, 1, 0.05, (v) => Number(v).toFixed(2));
  const hover = element("p", { className: "hover", "aria-live": "polite", textContent: "Point at the image to name a pixel's class." });
  card.details.append(legend, opacity.wrapper, hover);
  const context = canvas.getContext("2d");
  const render = () => {
    context.drawImage(image, 0, 0);
    context.globalAlpha = Number(opacity.input.value);
    for (const mask of masks) context.drawImage(mask.canvas, 0, 0);
    context.globalAlpha = 1;
  };
  canvas.addEventListener("mousemove", (event) => {
    const x = Math.floor((event.offsetX * canvas.width) / canvas.clientWidth);
    const y = Math.floor((event.offsetY * canvas.height) / canvas.clientHeight);
    const found = masks.findIndex((mask) => mask.inside[y * mask.width + x]);
    hover.dataset.x = String(x);
    hover.dataset.y = String(y);
    hover.dataset.label = found >= 0 ? segments[found].label : "";
    hover.textContent = found >= 0 ? `(${x}, ${y}): ${segments[found].label}` : `(${x}, ${y})`;
  });
  opacity.input.addEventListener("input", render);
  render();
}

async function reconstruction(card) {
  const ratio = slider("Share of the image hidden", page.info.default_mask_ratio, 0.1, 0.9, 0.05, (v) => `${Math.round(100 * v)}%`);
  const loss = element("p", { className: "note loss", "aria-live": "polite" });
  card.details.append(ratio.wrapper, loss);
  const picture = element("img", { alt: `Masked and reconstructed ${card.file.name}` });
  card.picture.append(picture);
  card.node.querySelector(".card-body").classList.add("wide");
  const draw = async () => {
    try {
      const params = { mask_ratio: ratio.input.value };
      const [answer, panels] = await Promise.all([predict(card.file, params), visualize(card.file, params)]);
      card.json = answer;
      card.png = panels;
      picture.src = URL.createObjectURL(panels);
      await picture.decode();
      loss.dataset.loss = String(answer.loss);
      loss.textContent = `L1 error on the hidden pixels: ${answer.loss.toFixed(4)}`;
    } catch (error) {
      card.fail(error);
    }
  };
  ratio.input.addEventListener("input", debounce(draw));
  await draw();
}

const RENDERERS = {
  "image-classification": classification,
  "object-detection": detection,
  "image-segmentation": segmentation,
  "masked-image-modeling": reconstruction,
};

// ------------------------------------------------------------------------------------------------
// images in: picker, drag and drop, paste
function addFiles(files) {
  for (const file of files) new Card(file);
}

function start() {
  page.ready = loadModel();
  page.ready.catch(() => {});
  const input = document.getElementById("files");
  const drop = document.getElementById("drop");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  input.addEventListener("focus", () => document.body.classList.add("file-focus"));
  input.addEventListener("blur", () => document.body.classList.remove("file-focus"));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = [...event.clipboardData.items].filter((item) => item.kind === "file").map((item) => item.getAsFile());
    if (files.length) addFiles(files);
  });
  document.getElementById("clear").addEventListener("click", (event) => {
    document.getElementById("cards").replaceChildren();
    event.target.hidden = true;
  });
}

start();

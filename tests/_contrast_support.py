"""Readability checks of the web pages in the browser tests (WCAG 2 contrast, AA: ratio >= 4.5).

* `assert_toast_readable(page, kind)`: a screenshot of the visible `#toast`, read with Pillow: its
  background is the most common colour, its text the colour (present in enough pixels) that stands out
  most from it; their contrast ratio must be >= 4.5. This is what a person sees, whatever CSS rule won.
* `assert_page_readable(page)`: every visible text on the page (elements with their own text, inputs,
  SVG text), with its computed colour against the backgrounds painted under it (alpha and opacity
  composited, every stop of a gradient tried), must reach 4.5. Disabled controls and the live-status
  dot (a symbol with a tooltip, not text) are exempt, as WCAG allows.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

MIN_RATIO = 4.5


def _linear(c: float) -> float:
    c /= 255
    return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4


def luminance(rgb: tuple[int, int, int] | list[int]) -> float:
    r, g, b = rgb[:3]
    return 0.2126 * _linear(r) + 0.7152 * _linear(g) + 0.0722 * _linear(b)


def contrast(a: tuple[int, int, int] | list[int], b: tuple[int, int, int] | list[int]) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def toast_colours(png: bytes) -> tuple[tuple[int, int, int], tuple[int, int, int], float]:
    """(background, text, ratio) read from a screenshot of a toast."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    inner = img.crop((4, 4, max(5, w - 4), max(5, h - 4)))  # inside the rounded corners
    raw = inner.tobytes()
    counts = Counter(zip(raw[0::3], raw[1::3], raw[2::3], strict=True))
    background = counts.most_common(1)[0][0]
    enough = max(6, sum(counts.values()) // 2000)  # glyph cores, not a stray anti-aliasing pixel
    candidates = [colour for colour, n in counts.items() if n >= enough and colour != background]
    assert candidates, f"no text pixels found in the toast (background {background})"
    text = max(candidates, key=lambda c: contrast(c, background))
    return background, text, contrast(text, background)


def assert_toast_readable(page: Any, kind: str, contains: str = "", timeout_ms: int = 10_000) -> str:
    """Wait for a visible toast of `kind` (error/ok/info) holding `contains`; check its contrast by pixels."""
    toast = page.locator(f"#toast.{kind}:not(.hidden)", has_text=contains)
    toast.wait_for(state="visible", timeout=timeout_ms)
    background, text, ratio = toast_colours(toast.screenshot())
    message = toast.inner_text()
    assert ratio >= MIN_RATIO, (
        f"{kind} toast {message!r}: text {text} on {background} has contrast {ratio:.2f} < {MIN_RATIO}"
    )
    return message


_AUDIT_JS = r"""
(minRatio) => {
  const parse = (c) => {
    const m = /rgba?\(([^)]+)\)/.exec(c || "");
    if (!m) return null;
    const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, under) => top.slice(0, 3).map((v, i) => v * top[3] + under[i] * (1 - top[3]));
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const lum = (c) => 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  // every colour the background under `node` may have: the ancestors' colours composited root first;
  // a gradient contributes each of its stops
  const backgrounds = (node) => {
    const chain = [];
    for (let e = node; e && e.nodeType === 1; e = e.parentElement) chain.push(e);
    let under = [[255, 255, 255]];
    for (const e of chain.reverse()) {
      const cs = getComputedStyle(e);
      const stops = (cs.backgroundImage.match(/rgba?\([^)]+\)/g) || []).map(parse);
      if (stops.length) under = stops.flatMap((s) => under.map((u) => over(s, u)));
      const c = parse(cs.backgroundColor);
      if (c && c[3] > 0) under = under.map((u) => over(c, u));
    }
    return under;
  };
  const visible = (e) => {
    if (!e.getClientRects().length) return false;
    const cs = getComputedStyle(e);
    return cs.visibility !== "hidden" && cs.display !== "none";
  };
  const opacity = (e) => { let o = 1; for (; e && e.nodeType === 1; e = e.parentElement) o *= Number(getComputedStyle(e).opacity); return o; };
  const exempt = (e) => e.closest(".live, option, video, script, style, title, [aria-hidden='true']") ||
    (e.closest("button, input, select, textarea") || {}).disabled;
  const bad = [];
  const seen = new Set();
  const check = (e, text) => {
    if (seen.has(e) || exempt(e) || !visible(e)) return;
    seen.add(e);
    const cs = getComputedStyle(e);
    const svg = e instanceof SVGElement;
    const placeholder = e.matches("input, textarea") && !e.value;
    const colour = parse(svg ? cs.fill : placeholder ? getComputedStyle(e, "::placeholder").color : cs.color);
    if (!colour) return;
    const alpha = colour[3] * opacity(e) * (svg ? Number(cs.fillOpacity || 1) : 1);
    for (const bg of backgrounds(e)) {
      const fg = over([colour[0], colour[1], colour[2], alpha], bg);
      const r = ratio(fg, bg);
      if (r < minRatio) {
        bad.push({ text: text.trim().slice(0, 40), ratio: Math.round(r * 100) / 100,
          color: fg.map(Math.round).join(","), background: bg.map(Math.round).join(","),
          element: e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.className && e.className.baseVal === undefined && e.className ? "." + String(e.className).trim().split(/\s+/).join(".") : "") });
        break;
      }
    }
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    if (t.nodeValue.trim() && t.parentElement) check(t.parentElement, t.nodeValue);
  }
  for (const e of document.querySelectorAll("input:not([type=hidden]):not([type=file]), select, textarea")) {
    if (e.value || e.placeholder) check(e, e.value || e.placeholder);
  }
  return bad;
}
"""


def page_contrast_problems(page: Any) -> list[dict[str, Any]]:
    return page.evaluate(_AUDIT_JS, MIN_RATIO)


def assert_page_readable(page: Any, state: str) -> None:
    problems = page_contrast_problems(page)
    assert not problems, f"{state}: text below contrast {MIN_RATIO}: " + "; ".join(
        f"{p['element']} {p['text']!r} {p['color']} on {p['background']} = {p['ratio']}" for p in problems
    )

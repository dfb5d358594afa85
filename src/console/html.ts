/**
 * HTML escaped by construction. `html\`…\`` escapes every interpolated value unless it is already Html (a
 * nested html`` or an explicit `unsafeRaw()`), so caller-supplied text (domains, details, reqType, alarm
 * content) cannot become markup by forgetting to escape it at one call site.
 */

/** A fragment of markup that is known to be safe to emit as is. */
export class Html {
  constructor(readonly value: string) {}
  toString(): string { return this.value; }
}

/** What may be interpolated: text (escaped), numbers, Html, nothing, or lists of these. */
export type HtmlValue = Html | string | number | bigint | boolean | null | undefined | readonly HtmlValue[];

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

/** Escapes text for an element body or a quoted attribute value. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"'`]/g, (c) => ESCAPES[c]!);
}

function render(value: HtmlValue): string {
  if (value instanceof Html) return value.value;
  // null/undefined/false render as nothing, so `${cond && html`…`}` reads naturally.
  if (value === null || value === undefined || value === false) return '';
  if (Array.isArray(value)) return value.map(render).join('');
  return escapeHtml(String(value));
}

/** The tagged template: literal parts are trusted (they are our source code), values are escaped. */
export function html(strings: TemplateStringsArray, ...values: HtmlValue[]): Html {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1]!;
  return new Html(out);
}

/**
 * Marks a string as markup. Only for text this code produced itself (never for anything a caller, the
 * vendor or the database supplied); grep for it when reviewing.
 */
export function unsafeRaw(markup: string): Html {
  return new Html(markup);
}

/** Joins fragments with a separator (both escaped unless Html). */
export function join(items: readonly HtmlValue[], separator: HtmlValue = ''): Html {
  return new Html(items.map(render).join(render(separator)));
}

// Moving between pages: every page lives in the URL's fragment.

/** What a page gets: where to draw, the route's parameters, and a signal that fires when the user leaves. */
export interface PageContext {
  main: HTMLElement;
  params: URLSearchParams;
  segments: string[];
  signal: AbortSignal;
}

/** Navigates to `#/path?query`. */
export function go(path: string): void {
  window.location.hash = `#/${path}`;
}

/** The fragment link to `path` with `params`. */
export function link(path: string, params: Record<string, string> = {}): string {
  const query = new URLSearchParams(params).toString();
  return `#/${path}${query ? `?${query}` : ""}`;
}

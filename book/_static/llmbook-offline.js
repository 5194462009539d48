// The HTML edition opened from the disk (file://): Sphinx's search fetches every result page
// to show a summary under it, and a browser refuses fetch() on file:// URLs, which leaves an
// uncaught "Failed to fetch" per result. From the disk, search lists the pages without
// summaries; over HTTP it shows them as usual. (Loaded after documentation_options.js.)
if (window.location.protocol === "file:" && typeof DOCUMENTATION_OPTIONS !== "undefined") {
  DOCUMENTATION_OPTIONS.SHOW_SEARCH_SUMMARY = false;
}

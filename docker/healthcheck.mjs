// HEALTHCHECK of the images: exit 0 when the server answers GET /healthz with 2xx within 3 s, else 1.
// Workers (`serve --role worker`) serve no HTTP: compose disables the check for them.
const port = process.env.PORT || '8000';
const controller = new AbortController();
setTimeout(() => controller.abort(), 3000).unref();
try {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: controller.signal });
  process.exit(res.ok ? 0 : 1);
} catch {
  process.exit(1);
}

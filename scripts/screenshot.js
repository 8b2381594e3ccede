// Full-page PNG of a local HTML file with headless Chromium, to look at `maskray report` as a
// reader does. Needs node and two packages from the npm registry (no browser download: the
// Chromium binary ships inside @sparticuz/chromium); scripts/screenshot.sh installs them.
//   node screenshot.js file:///abs/path/index.html out.png [width]
const chromium = require('@sparticuz/chromium').default;
const puppeteer = require('puppeteer-core');

(async () => {
  const [url, out, width] = process.argv.slice(2);
  const browser = await puppeteer.launch({
    executablePath: await chromium.executablePath(), args: chromium.args, headless: 'shell',
    defaultViewport: {width: parseInt(width || '1200', 10), height: 900}});
  const page = await browser.newPage();
  await page.goto(url, {waitUntil: 'load'});
  await page.screenshot({path: out, fullPage: true});
  await browser.close();
})().catch((err) => { console.error(err); process.exit(1); });

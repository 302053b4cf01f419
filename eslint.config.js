// ESLint (flat config) for the demo page and the JS test clients. Run by tests/test_js_lint.py
// with the eslint that `npm ci --prefix tests/js` installs, so CI fails on a regression.
import js from "./tests/js/node_modules/@eslint/js/src/index.js";
import globals from "./tests/js/node_modules/globals/index.js";

// the product's event names (static/js/events.js): nowhere else as literals in on/emit calls
const PRODUCT_EVENTS = "join-study|leave-study|message|typing|read|notification|notification-read|" +
  "user-online|user-offline|member-joined|member-left|task-updated|task-assigned|error";

export default [
  { ignores: ["**/node_modules/**", "static/vendor/**", ".venv/**", "test-artifacts/**"] },
  js.configs.recommended,
  { rules: { "no-unused-vars": ["error", { caughtErrors: "none" }] } },
  {
    files: ["static/**/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: { ...globals.browser } },
    rules: {
      "no-restricted-syntax": ["error", {
        selector: `CallExpression[callee.property.name=/^(on|once|off|emit)$/] > Literal:first-child[value=/^(${PRODUCT_EVENTS})$/]`,
        message: "Use ClientEvent / ServerEvent from static/js/events.js for the product's event names.",
      }],
      "max-lines": ["error", { max: 500, skipBlankLines: true, skipComments: true }],
      "eqeqeq": ["error", "smart"],
      "no-var": "error",
      "prefer-const": "error",
    },
  },
  {
    // main.js wires the parts together; features belong in their own module (chat.js, tasks.js, ...)
    files: ["static/js/main.js"],
    rules: { "max-lines": ["error", { max: 300, skipBlankLines: true, skipComments: true }] },
  },
  {
    // a classic script (no modules) loaded by <script src>, written in ES5 for old browsers behind proxies
    files: ["static/sockjs-coup.js"],
    languageOptions: { ecmaVersion: 5, sourceType: "script", globals: { ...globals.browser, SockJS: "readonly", Promise: "readonly", module: "readonly", require: "readonly" } },
    rules: { "no-var": "off", "prefer-const": "off" },
  },
  {
    files: ["tests/**/*.mjs", "tests/**/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: { ...globals.node } },
  },
  {
    // benchmark peers run by Node as CommonJS scripts (bench/*.js)
    files: ["bench/**/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "commonjs", globals: { ...globals.node } },
  },
];

import { defineConfig } from 'vitest/config';

// Unit tests of the pure rules (src/logic.ts): no browser, no JupyterLab.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node'
  }
});

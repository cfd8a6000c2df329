// ESLint for the JupyterLab extension: typescript-eslint's recommended rules,
// React's hook rules, and nothing about layout (prettier owns that).
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import reactHooks from 'eslint-plugin-react-hooks';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/', 'node_modules/', '../jupyter_sac/labextension/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['src/**/*.{ts,tsx}', 'test/**/*.{ts,tsx}'],
    plugins: { 'react-hooks': reactHooks },
    rules: {
      ...reactHooks.configs.recommended.rules,
      // API bodies are plain JSON read field by field, as in JupyterLab's
      // extension template, which turns this rule off too
      '@typescript-eslint/no-explicit-any': 'off',
      // unused arguments named _x are deliberate (callbacks with a fixed signature)
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      eqeqeq: ['error', 'smart'],
      curly: ['error', 'all']
    }
  },
  prettier
);

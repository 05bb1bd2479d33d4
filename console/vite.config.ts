import { defineConfig } from 'vite';

// The gateway serves dist/ and answers grpc-web on the same origin. For `npm run dev`, calls go
// to the gateway named by KAPAL_GATEWAY (default http://127.0.0.1:8080) through Vite's proxy.
const gateway = process.env.KAPAL_GATEWAY ?? 'http://127.0.0.1:8080';

export default defineConfig({
  // Relative asset URLs, so the console works wherever the gateway mounts it.
  base: './',
  resolve: {
    // @kapal/client is a symlink (file:../clients/typescript): resolve its imports from here so
    // there is one copy of @bufbuild/protobuf, whether or not the client has its own node_modules.
    preserveSymlinks: true,
    dedupe: ['@bufbuild/protobuf', '@connectrpc/connect'],
  },
  oxc: {
    jsx: { runtime: 'automatic', importSource: 'preact' },
  },
  build: {
    target: 'es2022',
    // No inline polyfill script: the page runs under a CSP without 'unsafe-inline'.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  server: {
    proxy: {
      '^/kapal\\.v1\\.': { target: gateway, changeOrigin: false },
    },
  },
  // `vite preview` serves dist/ under the same strict policy the gateway sends, so a violation
  // shows up in the browser's console before it reaches the gateway.
  preview: {
    headers: {
      'content-security-policy':
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
        "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    },
  },
});

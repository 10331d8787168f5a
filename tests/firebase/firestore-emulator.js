// Start the in-memory Firestore emulator (@firestore-emulator/server) on 127.0.0.1:<port>.
// Usage: NODE_PATH=<node_modules from scripts/firebase-emulators> node firestore-emulator.js <port>
// The package's own start() binds 0.0.0.0; tests only ever listen on loopback, so bind it here.
"use strict";
const { ServerCredentials } = require("@grpc/grpc-js");
const { FirestoreServer } = require("@firestore-emulator/server");

const port = Number(process.argv[2] || "8080");
const emulator = new FirestoreServer();
emulator.server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(`firestore emulator: cannot listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  }
  console.log(`firestore emulator listening on 127.0.0.1:${bound}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    emulator.stop();
    process.exit(0);
  });
}

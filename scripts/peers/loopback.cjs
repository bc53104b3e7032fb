// Preloaded into peers that listen on every interface and have no option
// against it (supergateway): a listen on a port alone binds 127.0.0.1.
// node --require scripts/peers/loopback.cjs PROGRAM ...
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    const callbacks = args.slice(1).filter((a) => typeof a === "function");
    return listen.call(this, Number(args[0]), "127.0.0.1", ...callbacks);
  }
  return listen.apply(this, args);
};

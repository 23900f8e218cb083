// Package gossip is cnm's gossip plane: an encrypted cluster of hosts on
// github.com/hashicorp/memberlist, with keys that rotate every 12 hours without losing a
// message, and tables replicated per network in the spirit of Docker's networkdb. The overlay
// driver reads from it which endpoint (IP, MAC) sits behind which host.
//
// # Lifecycle
//
// [New] binds the node's TCP and UDP port, loads or creates its keyring and starts its
// goroutines; it contacts nobody. [Node.Join] contacts one or more peers and exchanges full
// state with them. [Node.Leave] says goodbye (peers drop the node's entries at once);
// [Node.Close] stops every goroutine the node started and waits for them. A closed node cannot
// be reopened: create a new one with the same Config (and KeyringFile) to restart.
//
// Every method is safe for concurrent use. Nothing needs privileges: a node is a pair of
// sockets. The only file the package writes is Config.KeyringFile; with a Config.Store, the
// node also keeps two records in it (see "Keys in a store").
//
// # Membership
//
// memberlist runs SWIM: members probe each other, a member that misses probes is suspected,
// then declared failed unless it refutes. [Node.Members] lists members with their state and
// [Node.WatchMembers] delivers join, update, leave and fail events. A graceful leave is
// announced before memberlist's own goodbye, so peers tell it from a failure. Every
// ReconnectInterval a node tries to rejoin one random failed member, which heals partitions
// (and false failure verdicts) within seconds of their end, and every AntiEntropyInterval it
// does a full push/pull of membership with one random member (every half second while the
// membership is changing), which fills the holes gossip alone sometimes leaves.
//
// # Encryption
//
// Every packet and stream is encrypted and authenticated with AES-GCM by memberlist's keyring,
// with GossipVerifyIncoming and GossipVerifyOutgoing on: there is no unencrypted mode. The
// cluster label (Config.ClusterLabel) is sent in clear and bound into the GCM additional data.
// A node without a key of the cluster can neither join nor read anything; what it sends is
// rejected and counted ([Stats].DecryptFailures, LabelRejects), as is garbage. Keys are never
// logged; logs, errors and [KeyringStatus] show [KeyID] fingerprints.
//
// # Key rotation
//
// Every RotationInterval (12 hours by default) the cluster rotates its key. One member drives
// the rotation: without a store, the alive member with the lowest name; with a Config.Store,
// the member that holds the store lock <StorePrefix>/rotation-lock (see "Keys in a store").
// The rotation state (epoch, phase, target keyring, time of the next rotation) is replicated
// to every member by gossip and push/pull and persisted in each member's KeyringFile (and in
// the store), so if the driver crashes mid-rotation the next driver finishes it, and neither a
// restart nor a change of driver resets the schedule.
//
// A rotation goes add, use, remove, each step acknowledged by every member before the next:
//
//  1. install: every member adds a fresh random key (decrypt only). The driver waits until
//     every member advertises, in its memberlist meta data, that it holds the target keys.
//  2. use: every member switches its primary to the key installed by the previous rotation
//     (a whole interval ago). The driver waits until every member advertises it.
//  3. remove: every member removes the keys the target dropped: the one that was primary two
//     rotations ago. The driver waits until no member advertises it any more.
//
// So a node never encrypts with a key a peer lacks, and never drops a key a peer may still
// encrypt with: no message is rejected because of a rotation. Between rotations each member
// holds three keys: the previous primary (decrypt only), the primary, and the next one (decrypt
// only, staged a whole interval before it is used). The first rotation of a cluster started
// with one key installs two fresh keys, one to use at once and one staged.
//
// # Rejoining after an absence
//
// A member that was away (down, or cut off) during one rotation still shares two keys with the
// cluster: it encrypts with what is now the others' previous key, and it already holds their
// primary, which it staged before it left. It rejoins by itself (the reconnect loop, or its own
// Join with the persisted keyring) and catches up with the rotation state it is pushed.
//
// A member that missed two rotations or more (away longer than one RotationInterval, at
// worst) shares no key with the cluster. Give it the current keyring before it starts: copy the
// KeyringFile of a healthy member over its own (the file is JSON, mode 0600), or delete its
// KeyringFile and set Config.Keys to the keys [Node.Keys] returns on a healthy member. A
// running node can also be repaired with [Node.AddKey] and [Node.UseKey] before [Node.Join].
// When KeyringFile exists it wins over Config.Keys: Config.Keys only bootstraps a node that has
// no keyring file yet. With a Config.Store none of this is needed for a restart: a node starts
// from the store's rotation state when it is newer than its file's (see below), so a member
// that was down for any length of time rejoins by itself. (A node reads the store only at
// New: one that kept running while cut off for two rotations needs a restart.)
//
// # Keys in a store
//
// With Config.Store (any [kvstore.Store] that implements [kvstore.Locker]: bbolt for nodes of
// one process, etcd or Consul for a real cluster; give every member the same store), two
// records live under Config.StorePrefix ("cnm/v1/gossip/<ClusterLabel>" by default):
//
//   - <prefix>/rotation-lock: the lock whose holder drives the rotations. Every member that
//     drives (RotationInterval >= 0) keeps trying to take it in the background. The holder
//     gives it up on [Node.Leave] and [Node.Close], and stops driving when the store reports
//     the lock lost (its lease ran out). A holder that crashes loses the lock when its lease
//     runs out (the backend's lock TTL); another member takes it and resumes the rotation
//     from the newer of the store's record and the replicated state. While no member can take
//     the lock (the store is down), rotations wait: that is never unsafe, as the keys only
//     change under a driver.
//   - <prefix>/keyring: the cluster's rotation state as JSON (the target keys in base64, the
//     phase, the time of the next rotation, and which node wrote it). The driver writes each
//     step there, with a compare-and-swap on the revision it last saw, before any member
//     applies it; a driver whose lock ran out without it noticing fails that write, reads the
//     record again and adopts what the new driver wrote. A node that finds no record at [New] creates it (create-only)
//     from its keyring file or Config.Keys.
//
// At [New] a node reads the record: it starts from the newer of the record's state and its
// KeyringFile's, and converges its keys to the store's at once when the file lags behind.
// Without a file it takes its keys from the store, so a node restarted without its data dir,
// or a brand-new node given nothing but the store, starts with the cluster's current keys;
// Config.Keys only bootstraps a cluster whose store has no record yet. New fails when the
// store cannot be read and the node has no keyring file; with one, it starts from the file and
// says so in the log. Members still keep their KeyringFile: it is what they restart from when
// the store is down.
//
// Without a key-encryption key the store holds the cluster's gossip keys in clear inside the
// record (and a warning at New says so): whoever reads <prefix>/keyring can read and join the
// gossip. With Config.StoreKEK (32 bytes) or Config.StorePassphrase (turned into one by
// Argon2id: 3 passes over 64 MiB, 4 lanes, a random salt kept in the record), the record is
// sealed: version 2, the clear record encrypted with XChaCha20-Poly1305 (a random 24-byte
// nonce per write), the record's store key as additional data, so reading the store alone
// reveals no key, and a record copied under another prefix does not open. Give every member
// the same KEK. A node with one reseals a clear record it finds at New (the migration from
// a cluster without one). A sealed record that a node cannot open, because it has no KEK or
// another one, fails New with an error matching [ErrKEK] that names StoreKEK: never a silent
// fallback to the keyring file or Config.Keys. Protect the store anyway: TLS with client
// certificates, and ACLs that give StorePrefix to the cnm hosts only (a sealed record can
// still be deleted). Key material is never logged, neither from the store nor otherwise: logs
// and errors name the record's key and show [KeyID] fingerprints; the KEK is never logged.
//
// # Replicated tables
//
// A node takes part in the tables of the networks it joins ([Node.JoinNetwork]). Per network,
// a table maps keys to values; each entry is owned by the node that wrote it
// ([Node.CreateEntry], [Node.UpdateEntry], [Node.DeleteEntry]). Writes carry Lamport times
// (started from the wall clock, so a restarted node's writes supersede its previous
// incarnation's); the later write wins everywhere, ties going to the greater owner name.
// Deletes stay as tombstones for ReapInterval.
//
// Writes are gossiped every GossipInterval over UDP to GossipNodes peers of the network, taken
// round-robin from a shuffled list so that the retransmissions of one write reach distinct
// peers, and relayed by every node that learns something new. A full bulk sync over TCP runs when a
// node joins a network, when a failed peer comes back, and every AntiEntropyInterval with one
// random peer, so a node that missed gossip converges. When a node leaves, its entries
// disappear everywhere at once; when it is declared failed they are hidden (watchers see
// deletes) and come back if the same incarnation returns, or are dropped after
// NodeReapInterval or when it restarts. [Node.Watch] delivers the changes.
package gossip

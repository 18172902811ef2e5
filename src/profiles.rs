//! Named settings profiles (feature `serde`; seeds 001, 002, 004): an ordered
//! list of settings sets, each enabled or not; the active one is the first
//! enabled. [`ProfileStore`] keeps them in a JSON file with sealed passwords,
//! written atomically, with optimistic concurrency, and reloads the
//! [`Mailer`]s that follow it when it is saved — no application restart.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relaymail::Error> {
//! use relaymail::profiles::{ProfileStore, Profiles};
//! use relaymail::settings::SecretKey;
//! use relaymail::{Mailer, SmtpSettings};
//!
//! let store = ProfileStore::new("/var/lib/app/smtp-profiles.json", SecretKey::from_env("APP_SMTP_KEY")?);
//! let mut profiles = store.load()?;
//! if profiles.get("primary").is_none() {
//!     let settings = SmtpSettings::from_url("smtps://app:secret@mail.example.com?from=noreply@example.com")?;
//!     profiles.add("primary", settings, true)?;
//!     store.save(&mut profiles)?;
//! }
//! let mailer = store.mailer(|settings| Mailer::builder(settings).build())?;
//! // Later, from the settings page: edit, save — the mailer follows.
//! profiles.set_enabled("primary", true)?;
//! store.save(&mut profiles)?;
//! # drop(mailer); Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind};
use crate::mailer::{Mailer, WeakMailer};
use crate::settings::{SealedSettings, SecretKey, SettingsUpdate, SmtpSettings};

/// One named settings set.
#[derive(Clone, Debug)]
pub struct Profile {
    name: String,
    enabled: bool,
    settings: SmtpSettings,
    test_on_save: bool,
}

impl Profile {
    /// Its name (unique, not empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it may be the active profile.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Its settings.
    pub fn settings(&self) -> &SmtpSettings {
        &self.settings
    }

    /// Whether the settings page sends a test email when this profile is
    /// saved (stored with the profile; relaymail only keeps the flag).
    /// False for a new profile.
    pub fn test_on_save(&self) -> bool {
        self.test_on_save
    }
}

/// The ordered profiles, as loaded (with the version they were loaded at).
#[derive(Clone, Debug, Default)]
pub struct Profiles {
    version: u64,
    list: Vec<Profile>,
}

fn not_found(name: &str) -> Error {
    Error::config(format!("there is no profile named {name:?}"))
}

fn check_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::config("a profile name may not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::config("a profile name may not contain control characters"));
    }
    Ok(name.to_owned())
}

impl Profiles {
    /// No profiles.
    pub fn new() -> Profiles {
        Profiles::default()
    }

    /// The store version these profiles were loaded at (0: never saved).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The profiles in order.
    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.list.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The profile named `name`.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.list.iter().find(|p| p.name == name.trim())
    }

    fn index(&self, name: &str) -> Result<usize, Error> {
        self.list
            .iter()
            .position(|p| p.name == name.trim())
            .ok_or_else(|| not_found(name))
    }

    /// Adds a profile at the end. Names are unique.
    pub fn add(&mut self, name: &str, settings: SmtpSettings, enabled: bool) -> Result<(), Error> {
        let name = check_name(name)?;
        if self.get(&name).is_some() {
            return Err(Error::config(format!("a profile named {name:?} already exists")));
        }
        self.list.push(Profile {
            name,
            enabled,
            settings,
            test_on_save: false,
        });
        Ok(())
    }

    /// Replaces a profile's settings.
    pub fn edit(&mut self, name: &str, settings: SmtpSettings) -> Result<(), Error> {
        let i = self.index(name)?;
        self.list[i].settings = settings;
        Ok(())
    }

    /// Applies a form's update (see [`SmtpSettings::apply`]) to a profile;
    /// nothing changes when it is invalid.
    pub fn update(&mut self, name: &str, update: SettingsUpdate) -> Result<(), Error> {
        let i = self.index(name)?;
        self.list[i].settings = self.list[i].settings.apply(update)?;
        Ok(())
    }

    /// Renames a profile.
    pub fn rename(&mut self, name: &str, new_name: &str) -> Result<(), Error> {
        let i = self.index(name)?;
        let new_name = check_name(new_name)?;
        if self
            .list
            .iter()
            .enumerate()
            .any(|(j, p)| j != i && p.name == new_name)
        {
            return Err(Error::config(format!(
                "a profile named {new_name:?} already exists"
            )));
        }
        self.list[i].name = new_name;
        Ok(())
    }

    /// Removes a profile and returns it.
    pub fn remove(&mut self, name: &str) -> Result<Profile, Error> {
        let i = self.index(name)?;
        Ok(self.list.remove(i))
    }

    /// Moves a profile to position `index` (clamped to the end).
    pub fn move_to(&mut self, name: &str, index: usize) -> Result<(), Error> {
        let i = self.index(name)?;
        let p = self.list.remove(i);
        let index = index.min(self.list.len());
        self.list.insert(index, p);
        Ok(())
    }

    /// Enables or disables a profile.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<(), Error> {
        let i = self.index(name)?;
        self.list[i].enabled = enabled;
        Ok(())
    }

    /// Sets whether the settings page sends a test email when the profile
    /// is saved ([`Profile::test_on_save`]).
    pub fn set_test_on_save(&mut self, name: &str, on: bool) -> Result<(), Error> {
        let i = self.index(name)?;
        self.list[i].test_on_save = on;
        Ok(())
    }

    /// The active profile: the first enabled one.
    pub fn active(&self) -> Result<&Profile, Error> {
        self.list.iter().find(|p| p.enabled).ok_or_else(|| {
            Error::config(if self.list.is_empty() {
                "no SMTP profile is configured"
            } else {
                "no SMTP profile is enabled"
            })
            .with_hint("enable a profile in the SMTP settings")
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredProfile {
    name: String,
    enabled: bool,
    settings: SealedSettings,
    /// Absent in stores written before it existed, and when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    test_on_save: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFile {
    format: u32,
    version: u64,
    profiles: Vec<StoredProfile>,
    /// HMAC-SHA-256 (under a subkey of the store's key) of everything
    /// above: names, order, `enabled`, every setting, the sealed passwords.
    /// Absent in stores written by earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

impl StoredFile {
    /// The bytes the store's tag covers, in a form no two stores share.
    fn authenticated_bytes(&self) -> Vec<u8> {
        let mut out = b"relaymail profile store\0".to_vec();
        out.extend_from_slice(&self.format.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(self.profiles.len() as u64).to_be_bytes());
        for p in &self.profiles {
            crate::settings::push_field(&mut out, p.name.as_bytes());
            out.push(u8::from(p.enabled));
            p.settings.authenticated_bytes(&p.name, &mut out);
            // Added later: only when on, so that stores written before keep
            // their tag. Its marker (0x20) differs from every optional part
            // of a record and cannot start what follows one (the next
            // profile's name length, far below 2^57, or the end).
            if p.test_on_save {
                out.push(0x20);
                out.push(1);
            }
        }
        out
    }
}

/// A JSON file of profiles with sealed passwords. See the [module docs](self).
#[derive(Debug)]
pub struct ProfileStore {
    path: PathBuf,
    key: SecretKey,
    followers: Mutex<Vec<WeakMailer>>,
    legacy_seals: bool,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Io, None, format!("{what} {}", path.display())).with_source(e)
}

impl ProfileStore {
    /// A store in `path`, sealing passwords with `key`.
    pub fn new(path: impl Into<PathBuf>, key: SecretKey) -> ProfileStore {
        ProfileStore {
            path: path.into(),
            key,
            followers: Mutex::new(Vec::new()),
            legacy_seals: true,
        }
    }

    /// Refuses passwords sealed by releases before 0.1 (version-1 seals,
    /// bound to the profile name only) instead of opening and re-sealing
    /// them. A version-1 record opens whatever settings stand beside it, so
    /// someone who can write the store and kept an old copy of it (a backup)
    /// could pair the old sealed password with a server of theirs. Once
    /// every store has been loaded by this version (which re-seals it), turn
    /// this on, or rotate the key ([`rotate_key`](Self::rotate_key)): old
    /// copies then no longer open at all.
    pub fn refuse_legacy_seals(mut self) -> ProfileStore {
        self.legacy_seals = false;
        self
    }

    /// The profiles, and whether any password had a version-1 seal.
    fn read(&self, key: &SecretKey) -> Result<(Profiles, bool), Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Profiles::new(), false)),
            Err(e) => return Err(io_error("cannot read the profile store", &self.path, e)),
        };
        let stored: StoredFile = serde_json::from_str(&text).map_err(|e| {
            Error::config(format!(
                "the profile store {} is not valid: {e}",
                self.path.display()
            ))
        })?;
        if stored.format != 1 {
            return Err(Error::config(format!(
                "unknown profile store format {}",
                stored.format
            )));
        }
        // The whole file is authenticated: profiles without a password, their
        // order and `enabled` included, not only each sealed password.
        let mut legacy = false;
        match &stored.mac {
            Some(mac) if key.verify_store_mac(&stored.authenticated_bytes(), mac) => {}
            Some(_) if stored.profiles.iter().any(|p| p.settings.sealed_with_other_key(key)) => {
                return Err(Error::new(
                    Kind::Config,
                    None,
                    "the profile store cannot be opened with this key",
                )
                .with_hint("use the key the store was saved with (or rotate it with rotate_key)"));
            }
            Some(_) => return Err(crate::settings::tampered().about("the profile store")),
            None if !self.legacy_seals => {
                return Err(Error::new(
                    Kind::Tampered,
                    None,
                    "the profile store is not authenticated (written by an older relaymail), and this store refuses such files",
                )
                .with_hint("load it once without refuse_legacy_seals to re-seal it, or enter the settings again"))
            }
            None => legacy = true,
        }
        let mut list = Vec::with_capacity(stored.profiles.len());
        for p in stored.profiles {
            if p.settings.is_legacy_seal() {
                if !self.legacy_seals {
                    return Err(Error::new(
                        Kind::Tampered,
                        None,
                        format!(
                            "profile {:?}: its password was sealed by an older relaymail (bound to the profile name only), and this store refuses such seals",
                            p.name
                        ),
                    )
                    .with_hint("enter the password again in the settings page, or load the store once without refuse_legacy_seals to re-seal it"));
                }
                legacy = true;
            }
            let settings = p
                .settings
                .unseal(key, &p.name)
                .map_err(|e| e.about(format_args!("profile {:?}", p.name)))?;
            list.push(Profile {
                name: p.name,
                enabled: p.enabled,
                settings,
                test_on_save: p.test_on_save,
            });
        }
        Ok((
            Profiles {
                version: stored.version,
                list,
            },
            legacy,
        ))
    }

    /// Loads the profiles (none when the file does not exist yet).
    ///
    /// A store whose passwords were sealed by an earlier release (version-1
    /// seals) is re-sealed in the current format at once, so that the old
    /// seals do not stay on disk until the next save; if that write fails
    /// (a read-only file, a concurrent save), the profiles are still
    /// returned and the next save re-seals them.
    pub fn load(&self) -> Result<Profiles, Error> {
        let (mut profiles, legacy) = self.read(&self.key)?;
        if legacy {
            let _ = self.write(&mut profiles, &self.key);
        }
        Ok(profiles)
    }

    /// Saves `profiles` if the file is still at the version they were loaded
    /// at (otherwise a [conflict](Error::is_conflict): someone saved in
    /// between; nothing is written). The write is atomic: a temporary file,
    /// fsync, rename over the store, fsync of the directory. On success
    /// `profiles` carries the new version and every following [`Mailer`]
    /// switches to the new active settings (when no profile is enabled they
    /// keep their previous settings, and [`Profiles::active`] says why).
    ///
    /// Like any [`Mailer::reload`], that makes the following mailers'
    /// outbox drafts that waited on the settings due at once, in the
    /// background; [`save_and_release`](ProfileStore::save_and_release)
    /// says how many.
    pub fn save(&self, profiles: &mut Profiles) -> Result<(), Error> {
        self.write(profiles, &self.key)?;
        self.reload_followers(profiles);
        Ok(())
    }

    /// [`save`](ProfileStore::save), with each following mailer reloaded
    /// through [`Mailer::reload_and_release`]: returns how many outbox
    /// drafts that waited on the settings (an authentication, TLS or
    /// configuration error) became due, summed over the followers — for a
    /// settings page that says "3 waiting messages released". Followers
    /// that share one outbox count each draft once (the first releases it,
    /// the next finds it released).
    ///
    /// An `Err` means nothing was saved (a [conflict](Error::is_conflict),
    /// the file could not be written) and no mailer was reloaded. After the
    /// save, a follower that refuses the settings keeps its previous ones
    /// and releases nothing, as with `save`; a follower whose outbox fails
    /// the release has the new settings all the same, its deliverer tries
    /// the release again in the background, and its drafts are not in the
    /// sum. Without an enabled profile nothing is reloaded: 0. The file is
    /// written on the calling task, as `save` does.
    pub async fn save_and_release(&self, profiles: &mut Profiles) -> Result<usize, Error> {
        self.write(profiles, &self.key)?;
        let Ok(active) = profiles.active() else {
            return Ok(0);
        };
        let settings = active.settings.clone();
        let mut released = 0;
        for mailer in self.live_followers() {
            if let Ok(n) = mailer.reload_and_release(settings.clone()).await {
                released += n;
            }
        }
        Ok(released)
    }

    fn write(&self, profiles: &mut Profiles, key: &SecretKey) -> Result<(), Error> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // One writer at a time, across processes: the check and the rename
        // happen under an exclusive lock on a lock file next to the store.
        let lock_path = self.path.with_extension("lock");
        // Private (0600 on unix), like the store itself.
        let lock = crate::fsutil::private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error("cannot open the lock file", &lock_path, e))?;
        lock.lock().map_err(|e| io_error("cannot lock", &lock_path, e))?;
        let on_disk = match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                serde_json::from_str::<StoredFile>(&text)
                    .map_err(|e| Error::config(format!("the profile store is not valid: {e}")))?
                    .version
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error("cannot read the profile store", &self.path, e)),
        };
        if on_disk != profiles.version {
            return Err(Error::new(
                Kind::Conflict,
                None,
                format!(
                    "the profile store was saved by someone else (version {on_disk}, these profiles are version {})",
                    profiles.version
                ),
            )
            .with_hint("load the profiles again, reapply the change and save"));
        }
        let next = on_disk + 1;
        let mut stored = StoredFile {
            format: 1,
            version: next,
            mac: None,
            profiles: profiles
                .list
                .iter()
                .map(|p| {
                    Ok(StoredProfile {
                        name: p.name.clone(),
                        enabled: p.enabled,
                        settings: p.settings.seal(key, &p.name)?,
                        test_on_save: p.test_on_save,
                    })
                })
                .collect::<Result<_, Error>>()?,
        };
        stored.mac = Some(key.store_mac(&stored.authenticated_bytes()));
        let json =
            serde_json::to_vec_pretty(&stored).map_err(|e| Error::config(format!("cannot encode: {e}")))?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{:x}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("profiles"),
            std::process::id(),
            crate::rand::random_u64()
        ));
        crate::fsutil::write_atomic(&tmp, &self.path, &json, None)
            .map_err(|e| io_error(e.step, &e.path, e.error))?;
        profiles.version = next;
        Ok(())
    }

    /// Stores `refresh_token`, sealed, as the OAuth2 refresh token of
    /// `profile` (feature `oauth2`): the one an
    /// [`OAuth2Provider`](crate::oauth2::OAuth2Provider) rotated to
    /// ([`on_refresh_token_rotated`](crate::oauth2::OAuth2Provider::on_refresh_token_rotated),
    /// [`take_rotated_refresh_token`](crate::oauth2::OAuth2Provider::take_rotated_refresh_token)).
    /// Nothing else of the profile changes, and the following mailers are
    /// not reloaded: the provider that rotated the token uses it already.
    /// Profiles loaded before are then out of date: saving them is a
    /// [conflict](Error::is_conflict) (load them again), so the old refresh
    /// token cannot be written back over the new one.
    ///
    /// # Errors
    ///
    /// No such profile, a profile without OAuth2 sign-in (config errors),
    /// or the store could not be written.
    #[cfg(feature = "oauth2")]
    pub fn save_refresh_token(
        &self,
        profile: &str,
        refresh_token: secrecy::SecretString,
    ) -> Result<(), Error> {
        use crate::settings::Auth;
        // A save by someone else between the load and the write is a
        // conflict: load again and retry, a few times.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut profiles = self.load()?;
            let i = profiles.index(profile)?;
            let settings = &profiles.list[i].settings;
            let Some(source) = settings.oauth2.as_ref() else {
                return Err(Error::config(format!(
                    "profile {profile:?} does not use OAuth2 sign-in: there is no refresh token to store"
                )));
            };
            let mut parts = source.parts();
            parts.refresh_token = refresh_token.clone();
            let provider = parts.provider().map_err(|errors| {
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                Error::config(text.join("; "))
            })?;
            let mut updated = settings.clone();
            updated.auth = Auth::Provider(provider.clone());
            updated.oauth2 = Some(provider);
            profiles.list[i].settings = updated;
            match self.write(&mut profiles, &self.key) {
                Err(e) if e.is_conflict() && attempts < 3 => continue,
                other => return other,
            }
        }
    }

    /// Re-seals every password with `new` (key rotation) in one save; the
    /// store then uses `new`.
    pub fn rotate_key(&mut self, new: SecretKey) -> Result<(), Error> {
        let mut profiles = self.load()?;
        self.write(&mut profiles, &new)?;
        self.key = new;
        Ok(())
    }

    /// A mailer built by `build` from the active profile's settings, that
    /// follows the store: each [`save`](ProfileStore::save) (and
    /// [`reload`](ProfileStore::reload)) switches it to the active settings.
    pub fn mailer(&self, build: impl FnOnce(SmtpSettings) -> Result<Mailer, Error>) -> Result<Mailer, Error> {
        let profiles = self.load()?;
        let mailer = build(profiles.active()?.settings.clone())?;
        self.follow(&mailer);
        Ok(mailer)
    }

    /// Makes `mailer` follow the store.
    pub fn follow(&self, mailer: &Mailer) {
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        followers.retain(|w| w.upgrade().is_some());
        followers.push(mailer.downgrade());
    }

    /// Reads the file again (after another process saved it) and switches
    /// the following mailers to its active profile (which, through
    /// [`Mailer::reload`], makes their outbox drafts that waited on the
    /// settings due at once, in the background).
    pub fn reload(&self) -> Result<Profiles, Error> {
        let profiles = self.load()?;
        self.reload_followers(&profiles);
        Ok(profiles)
    }

    /// The following mailers still alive (taken out of the lock: a reload
    /// may await).
    fn live_followers(&self) -> Vec<Mailer> {
        let followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        followers.iter().filter_map(WeakMailer::upgrade).collect()
    }

    fn reload_followers(&self, profiles: &Profiles) {
        let Ok(active) = profiles.active() else {
            return;
        };
        for mailer in self.live_followers() {
            // The settings were validated when they were built; a TLS
            // configuration error, or attachments as links on a mailer
            // without an attachment store, leaves the old settings in place.
            let _ = mailer.reload(active.settings.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(host: &str) -> SmtpSettings {
        SmtpSettings::builder()
            .host(host)
            .sender("noreply@example.com")
            .credentials("app", format!("pw-for-{host}"))
            .build()
            .expect("settings")
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("relaymail-profiles-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join("profiles.json")
    }

    #[test]
    fn ordered_named_first_enabled_is_active() {
        let mut p = Profiles::new();
        assert!(p
            .active()
            .expect_err("none")
            .to_string()
            .contains("no SMTP profile is configured"));
        p.add("primary", settings("a.example.com"), false).expect("add");
        p.add("backup", settings("b.example.com"), true).expect("add");
        assert!(
            p.add(" backup ", settings("c.example.com"), true).is_err(),
            "unique after trimming"
        );
        assert!(p.add("", settings("c.example.com"), true).is_err(), "not empty");
        assert_eq!(p.active().expect("active").name(), "backup");
        p.set_enabled("primary", true).expect("enable");
        assert_eq!(p.active().expect("active").name(), "primary");
        p.move_to("backup", 0).expect("move");
        assert_eq!(p.active().expect("active").name(), "backup");
        p.rename("backup", "secondary").expect("rename");
        assert!(p.rename("secondary", "primary").is_err(), "taken");
        let names: Vec<&str> = p.iter().map(Profile::name).collect();
        assert_eq!(names, ["secondary", "primary"]);
        p.remove("secondary").expect("remove");
        p.set_enabled("primary", false).expect("disable");
        assert!(p
            .active()
            .expect_err("none enabled")
            .to_string()
            .contains("no SMTP profile is enabled"));
        assert!(p.edit("missing", settings("x.example.com")).is_err());
    }

    #[test]
    fn store_round_trip_sealed_atomic_and_versioned() {
        let path = temp("roundtrip");
        let store = ProfileStore::new(&path, SecretKey::generate().expect("key"));
        let mut p = store.load().expect("empty");
        assert_eq!(p.version(), 0);
        p.add("primary", settings("a.example.com"), true).expect("add");
        store.save(&mut p).expect("saved");
        assert_eq!(p.version(), 1);
        let text = std::fs::read_to_string(&path).expect("file");
        assert!(!text.contains("pw-for-a.example.com"), "sealed: {text}");
        let again = store.load().expect("load");
        assert_eq!(
            format!("{:?}", again.active().expect("a").settings()),
            format!("{:?}", settings("a.example.com"))
        );
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn concurrent_saves_conflict_instead_of_losing_an_update() {
        let path = temp("conflict");
        let store = ProfileStore::new(&path, SecretKey::generate().expect("key"));
        let mut p = store.load().expect("load");
        p.add("primary", settings("a.example.com"), true).expect("add");
        store.save(&mut p).expect("saved");
        let mut alice = store.load().expect("load");
        let mut bob = store.load().expect("load");
        alice.add("alice", settings("b.example.com"), true).expect("add");
        bob.add("bob", settings("c.example.com"), true).expect("add");
        store.save(&mut alice).expect("first save wins");
        let e = store.save(&mut bob).expect_err("second save conflicts");
        assert!(e.is_conflict(), "{e}");
        let now = store.load().expect("load");
        assert!(now.get("alice").is_some() && now.get("bob").is_none());
        // Bob reloads and reapplies.
        let mut bob = store.load().expect("load");
        bob.add("bob", settings("c.example.com"), true).expect("add");
        store.save(&mut bob).expect("saved");
        assert_eq!(store.load().expect("load").len(), 3);
    }

    /// A store file as an earlier release wrote it: one version-1 seal.
    fn version_1_store(path: &Path, key: &SecretKey, old: &SmtpSettings) -> serde_json::Value {
        let file = serde_json::json!({
            "format": 1,
            "version": 3,
            "profiles": [{
                "name": "primary",
                "enabled": true,
                "settings": crate::settings::seal_version_1(old, key, "primary"),
            }],
        });
        std::fs::write(path, file.to_string()).expect("write");
        file
    }

    #[test]
    fn a_store_sealed_by_an_earlier_release_opens_and_is_resealed_on_load() {
        let path = temp("version1");
        let key = SecretKey::generate().expect("key");
        let old = settings("a.example.com");
        version_1_store(&path, &key, &old);
        let store = ProfileStore::new(&path, key);
        let p = store.load().expect("an old store opens");
        assert_eq!(
            format!("{:?}", p.active().expect("active").settings()),
            format!("{old:?}")
        );
        // Re-sealed by the load itself, not only at the next save.
        let text = std::fs::read_to_string(&path).expect("file");
        let saved: serde_json::Value = serde_json::from_str(&text).expect("json");
        let sealed = &saved["profiles"][0]["settings"]["password"];
        assert_eq!(sealed["version"], 2, "re-sealed in the current format: {text}");
        assert!(sealed["key_check"].is_string(), "{text}");
        let again = store.load().expect("the migrated store opens");
        assert_eq!(
            format!("{:?}", again.active().expect("active").settings()),
            format!("{old:?}")
        );
    }

    #[test]
    fn a_store_that_refuses_legacy_seals_does_not_open_an_old_password_replayed_into_it() {
        let path = temp("replayed");
        let key = SecretKey::generate().expect("key");
        let old = settings("a.example.com");
        // A copy of the store from before the upgrade (a backup).
        let backup = version_1_store(&path, &key, &old);
        let key_text = key.to_base64();
        ProfileStore::new(&path, key).load().expect("migrated");
        let key = SecretKey::from_base64(secrecy::ExposeSecret::expose_secret(&key_text)).expect("key");
        // Someone who can write the file puts the old sealed password back,
        // beside settings of their own.
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("file")).expect("json");
        file["profiles"][0]["settings"]["password"] = backup["profiles"][0]["settings"]["password"].clone();
        file["profiles"][0]["settings"]["settings"]["host"] = "attacker.example.net".into();
        file["profiles"][0]["settings"]["settings"]["tls"] = "none".into();
        std::fs::write(&path, file.to_string()).expect("write");
        let e = ProfileStore::new(&path, key)
            .refuse_legacy_seals()
            .load()
            .expect_err("refused");
        assert!(e.is_tampered(), "{e}");
        assert!(!e.to_string().contains("pw-for"), "{e}");
    }

    #[test]
    fn the_whole_store_is_authenticated_not_only_the_sealed_passwords() {
        let path = temp("authenticated");
        let store = ProfileStore::new(&path, SecretKey::generate().expect("key"));
        let mut p = store.load().expect("load");
        p.add("primary", settings("a.example.com"), true).expect("add");
        p.add("backup", settings("b.example.com"), false).expect("add");
        store.save(&mut p).expect("saved");
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("file")).expect("json");
        // Edits that need no key: a profile without a password put first
        // (all mail to another relay in clear text), another one enabled,
        // the order changed.
        let mut unsealed = saved.clone();
        let mut evil = unsealed["profiles"][0].clone();
        evil["name"] = "evil".into();
        evil["settings"]["settings"]["host"] = "attacker.example.net".into();
        evil["settings"]["settings"]["tls"] = "none".into();
        evil["settings"]["settings"]
            .as_object_mut()
            .expect("object")
            .remove("username");
        evil["settings"]
            .as_object_mut()
            .expect("object")
            .remove("password");
        unsealed["profiles"]
            .as_array_mut()
            .expect("array")
            .insert(0, evil);
        let mut enabled = saved.clone();
        enabled["profiles"][1]["enabled"] = true.into();
        let mut reordered = saved.clone();
        reordered["profiles"].as_array_mut().expect("array").swap(0, 1);
        let mut stripped = saved.clone();
        stripped.as_object_mut().expect("object").remove("mac");
        for (what, file) in [
            ("unsealed profile", unsealed),
            ("enabled", enabled),
            ("order", reordered),
        ] {
            std::fs::write(&path, file.to_string()).expect("write");
            let e = store.load().expect_err(what);
            assert!(e.is_tampered(), "{what}: {e}");
        }
        // Without its tag, the file reads as an older release's: accepted
        // (and re-tagged) unless legacy files are refused.
        std::fs::write(&path, stripped.to_string()).expect("write");
        let key_text = store.key.to_base64();
        let key = || SecretKey::from_base64(secrecy::ExposeSecret::expose_secret(&key_text)).expect("key");
        let e = ProfileStore::new(&path, key())
            .refuse_legacy_seals()
            .load()
            .expect_err("refused");
        assert!(e.is_tampered(), "{e}");
        store.load().expect("an untagged store opens by default");
        let retagged: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("file")).expect("json");
        assert!(retagged["mac"].is_string(), "tagged again on load");
        ProfileStore::new(&path, key())
            .refuse_legacy_seals()
            .load()
            .expect("opens");
        // Another key: said as such, not as tampering.
        let e = ProfileStore::new(&path, SecretKey::generate().expect("key"))
            .load()
            .expect_err("wrong key");
        assert!(!e.is_tampered(), "{e}");
    }

    #[test]
    fn a_profile_update_does_not_move_a_kept_password_to_another_server() {
        let mut p = Profiles::new();
        p.add("primary", settings("a.example.com"), true).expect("add");
        let mut update = SettingsUpdate::new();
        update.host = Some("attacker.example.net".into());
        update.tls = Some(crate::TlsMode::None);
        update.allow_plaintext_auth = Some(true);
        let e = p
            .update("primary", update)
            .expect_err("password kept for a new server");
        assert!(
            e.to_string().contains("password: enter the password again"),
            "{e}"
        );
        let kept = p.get("primary").expect("primary").settings();
        assert_eq!(kept.host(), "a.example.com", "nothing changed");
        let mut update = SettingsUpdate::new();
        update.sender_name = Some(Some("Example App".into()));
        p.update("primary", update).expect("same server");
    }

    #[test]
    fn wrong_key_and_rotation() {
        let path = temp("rotate");
        let mut store = ProfileStore::new(&path, SecretKey::generate().expect("key"));
        let mut p = store.load().expect("load");
        p.add("primary", settings("a.example.com"), true).expect("add");
        store.save(&mut p).expect("saved");
        let stranger = ProfileStore::new(&path, SecretKey::generate().expect("key"));
        assert!(stranger
            .load()
            .expect_err("wrong key")
            .to_string()
            .contains("cannot be opened"));
        let new = SecretKey::generate().expect("key");
        let new_text = new.to_base64();
        store.rotate_key(new).expect("rotated");
        let with_new = ProfileStore::new(
            &path,
            SecretKey::from_base64(secrecy::ExposeSecret::expose_secret(&new_text)).expect("key"),
        );
        assert_eq!(with_new.load().expect("new key").len(), 1);
    }
}

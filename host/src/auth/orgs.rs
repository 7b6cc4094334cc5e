//! Orgs and projects: their records, their slugs, and the lookups every
//! other part of auth starts from.

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{
    Auth, AuthError, Org, Project, index_key, index_prefix, new_id, now_rfc3339, read, read_id,
};

/// Longest org display name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// A project as stored: the public record and, once made, the identity
/// secret. No `Debug`: the secret must not reach a log.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct ProjectRecord {
    #[serde(flatten)]
    pub(super) project: Project,
    /// 64 hex characters (32 bytes), made on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) identity_secret: Option<String>,
}

impl Auth {
    /// Whether `s` is a slug: 1 to 63 of `[a-z0-9-]`, not starting or
    /// ending with `-` (a DNS label, so it fits a hostname as well as a
    /// path).
    pub fn valid_slug(s: &str) -> bool {
        (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn check_slug(slug: &str) -> Result<(), AuthError> {
        if Self::valid_slug(slug) {
            Ok(())
        } else {
            Err(AuthError::bad_input(
                "slug",
                format!(
                    "{slug:?} is not a slug: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
                ),
            ))
        }
    }

    /// Makes an org. [`AuthError::Conflict`] when the slug is taken.
    pub fn create_org(&self, slug: &str, name: Option<&str>) -> Result<Org, AuthError> {
        Self::check_slug(slug)?;
        let name = name.unwrap_or(slug);
        if name.trim().is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(AuthError::bad_input(
                "name",
                format!("1 to {MAX_NAME_CHARS} characters, no control characters"),
            ));
        }
        let org = Org {
            id: new_id("org"),
            slug: slug.to_owned(),
            name: name.to_owned(),
            created_at: now_rfc3339(),
        };
        let json = serde_json::to_vec(&org)?;
        let t = self.trees();
        (&t.orgs, &t.org_slugs).transaction(|(orgs, slugs)| {
            if slugs.get(slug.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(AuthError::Conflict));
            }
            slugs.insert(slug.as_bytes(), org.id.as_bytes())?;
            orgs.insert(org.id.as_bytes(), json.as_slice())?;
            Ok(())
        })?;
        self.flush()?;
        Ok(org)
    }

    /// The org with this id.
    pub fn org(&self, id: &str) -> Result<Option<Org>, AuthError> {
        read(&self.trees().orgs, id.as_bytes())
    }

    /// The org with this slug.
    pub fn org_by_slug(&self, slug: &str) -> Result<Option<Org>, AuthError> {
        match read_id(&self.trees().org_slugs, slug.as_bytes())? {
            Some(id) => self.org(&id),
            None => Ok(None),
        }
    }

    /// Every org, by slug.
    pub fn orgs(&self) -> Result<Vec<Org>, AuthError> {
        let mut orgs = Vec::new();
        for row in self.trees().org_slugs.iter() {
            let (_, id) = row?;
            if let Some(org) = self.org(&String::from_utf8_lossy(&id))? {
                orgs.push(org);
            }
        }
        Ok(orgs)
    }

    /// Makes a project in an org. [`AuthError::NotFound`] for an unknown
    /// org, [`AuthError::Conflict`] when the org has a project with this
    /// slug.
    pub fn create_project(&self, org_id: &str, slug: &str) -> Result<Project, AuthError> {
        Self::check_slug(slug)?;
        if self.org(org_id)?.is_none() {
            return Err(AuthError::NotFound);
        }
        let record = ProjectRecord {
            project: Project {
                id: new_id("prj"),
                org_id: org_id.to_owned(),
                slug: slug.to_owned(),
                created_at: now_rfc3339(),
            },
            identity_secret: None,
        };
        let json = serde_json::to_vec(&record)?;
        let slug_key = index_key(&[org_id, slug]);
        let id = record.project.id.as_bytes();
        let t = self.trees();
        (&t.projects, &t.project_slugs).transaction(|(projects, slugs)| {
            if slugs.get(&slug_key)?.is_some() {
                return Err(ConflictableTransactionError::Abort(AuthError::Conflict));
            }
            slugs.insert(slug_key.as_slice(), id)?;
            projects.insert(id, json.as_slice())?;
            Ok(())
        })?;
        self.flush()?;
        Ok(record.project)
    }

    /// The org's project with this slug, made if there is none.
    pub fn ensure_project(&self, org_id: &str, slug: &str) -> Result<Project, AuthError> {
        if let Some(project) = self.project_by_slug(org_id, slug)? {
            return Ok(project);
        }
        match self.create_project(org_id, slug) {
            // Made by someone else between the lookup and the create.
            Err(AuthError::Conflict) => self
                .project_by_slug(org_id, slug)?
                .ok_or(AuthError::Conflict),
            other => other,
        }
    }

    /// The project with this id.
    pub fn project(&self, id: &str) -> Result<Option<Project>, AuthError> {
        Ok(self.project_record(id)?.map(|record| record.project))
    }

    /// The org's project with this slug.
    pub fn project_by_slug(&self, org_id: &str, slug: &str) -> Result<Option<Project>, AuthError> {
        match read_id(&self.trees().project_slugs, &index_key(&[org_id, slug]))? {
            Some(id) => self.project(&id),
            None => Ok(None),
        }
    }

    /// One org's projects by slug, or (with `None`) every project by org
    /// id and slug.
    pub fn projects(&self, org_id: Option<&str>) -> Result<Vec<Project>, AuthError> {
        let slugs = &self.trees().project_slugs;
        let rows = match org_id {
            Some(org_id) => slugs.scan_prefix(index_prefix(&[org_id])),
            None => slugs.iter(),
        };
        let mut projects = Vec::new();
        for row in rows {
            let (_, id) = row?;
            if let Some(project) = self.project(&String::from_utf8_lossy(&id))? {
                projects.push(project);
            }
        }
        Ok(projects)
    }

    /// The stored project, identity secret included.
    pub(super) fn project_record(&self, id: &str) -> Result<Option<ProjectRecord>, AuthError> {
        read(&self.trees().projects, id.as_bytes())
    }

    /// The project `project_id` if it belongs to `org_id`; another org's
    /// project is [`AuthError::NotFound`] just like a missing one.
    pub(super) fn org_project(
        &self,
        org_id: &str,
        project_id: &str,
    ) -> Result<ProjectRecord, AuthError> {
        self.project_record(project_id)?
            .filter(|record| record.project.org_id == org_id)
            .ok_or(AuthError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{auth, org_and_project};
    use super::*;

    #[test]
    fn slugs() {
        for good in ["a", "acme", "a-b", "x1", "0", &"a".repeat(63)] {
            assert!(Auth::valid_slug(good), "{good:?}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a b", "é", "a/b", &long] {
            assert!(!Auth::valid_slug(bad), "{bad:?}");
        }
    }

    #[test]
    fn create_and_look_up_orgs_and_projects() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        assert!(org.id.starts_with("org_") && project.id.starts_with("prj_"));
        assert_eq!(org.name, "Acme");
        assert_eq!(auth.org(&org.id).expect("org"), Some(org.clone()));
        assert_eq!(auth.org_by_slug("acme").expect("org"), Some(org.clone()));
        assert_eq!(auth.org_by_slug("nope").expect("org"), None);
        assert_eq!(
            auth.project_by_slug(&org.id, "support").expect("project"),
            Some(project.clone())
        );
        assert_eq!(
            auth.project(&project.id).expect("project"),
            Some(project.clone())
        );

        let other = auth.create_org("beta", None).expect("org");
        assert_eq!(other.name, "beta");
        let theirs = auth
            .create_project(&other.id, "support")
            .expect("same slug, other org");
        assert_eq!(auth.orgs().expect("orgs"), vec![org.clone(), other.clone()]);
        assert_eq!(
            auth.projects(Some(&org.id)).expect("projects"),
            vec![project.clone()]
        );
        assert_eq!(
            auth.projects(Some(&other.id)).expect("projects"),
            vec![theirs]
        );
        assert_eq!(auth.projects(None).expect("projects").len(), 2);
    }

    #[test]
    fn duplicate_slugs_conflict() {
        let (_dir, auth) = auth();
        let (org, _) = org_and_project(&auth);
        let again = auth.create_org("acme", None);
        assert!(matches!(again, Err(AuthError::Conflict)), "{again:?}");
        assert_eq!(again.map_err(|e| e.status()).err(), Some(409));
        assert!(matches!(
            auth.create_project(&org.id, "support"),
            Err(AuthError::Conflict)
        ));
        assert_eq!(auth.orgs().expect("orgs").len(), 1, "nothing half-written");
    }

    #[test]
    fn bad_input_is_refused() {
        let (_dir, auth) = auth();
        for bad in ["Acme", "-x", ""] {
            let error = auth.create_org(bad, None).expect_err("bad slug");
            assert!(
                matches!(error, AuthError::BadInput { field: "slug", .. }),
                "{error:?}"
            );
            assert_eq!(error.code(), "invalid_request");
        }
        assert!(matches!(
            auth.create_org("ok", Some("bad\nname")),
            Err(AuthError::BadInput { field: "name", .. })
        ));
        let (org, _) = org_and_project(&auth);
        assert!(matches!(
            auth.create_project(&org.id, "Bad"),
            Err(AuthError::BadInput { field: "slug", .. })
        ));
        assert!(matches!(
            auth.create_project("org_missing", "fine"),
            Err(AuthError::NotFound)
        ));
    }

    #[test]
    fn ensure_project_gets_or_creates() {
        let (_dir, auth) = auth();
        let (org, project) = org_and_project(&auth);
        assert_eq!(
            auth.ensure_project(&org.id, "support").expect("get"),
            project
        );
        let made = auth.ensure_project(&org.id, "sales").expect("create");
        assert_eq!(made.slug, "sales");
        assert_eq!(auth.ensure_project(&org.id, "sales").expect("get"), made);
    }

    #[test]
    fn another_orgs_project_is_not_found() {
        let (_dir, auth) = auth();
        let (_, project) = org_and_project(&auth);
        let other = auth.create_org("beta", None).expect("org");
        assert!(matches!(
            auth.org_project(&other.id, &project.id),
            Err(AuthError::NotFound)
        ));
    }
}
